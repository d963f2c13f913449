"""`lms import`: put a GGUF file into the models directory as `<user>/<repo>/<basename>`.

Nothing ever appears under the model's final name half-written: a copy goes to a hidden
`.<name>.partial-<random>` file in the target folder (the catalog skips those), is
fsynced, then hard-linked into place. `os.link` refuses to overwrite, so two concurrent
imports of one name cannot clobber each other; the temporary name is then removed. On
filesystems without hard links the last step falls back to check-then-rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from daemon.catalog import safe_model_path
from daemon.errors import GgufError, InvalidRequest, ModelExists
from daemon.gguf import is_gguf_file, read_header
from daemon.model_keys import split_part, strip_name

ImportMode = Literal["move", "copy", "hard-link", "symbolic-link"]
CopyFn = Callable[[Path, Path], object]  # (source, destination); shutil.copyfile's shape

DEFAULT_PUBLISHER = "imported-models"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}


@dataclass(frozen=True, slots=True)
class ImportResult:
    source: Path
    target: Path
    mode: ImportMode
    dry_run: bool
    user_repo: str
    warnings: tuple[str, ...] = ()


def default_user_repo(source: Path) -> str:
    """`imported-models/<file name without quantization/split suffix>`, e.g.
    `Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf` -> `imported-models/Meta-Llama-3.1-8B-Instruct`,
    so the quantizations of one model land in one folder and become its variants."""
    part = split_part(source.name)
    stem = part[0] if part else source.stem
    repo = re.sub(r"[^A-Za-z0-9._-]+", "-", strip_name(stem)).lstrip("._-")[:128]
    return f"{DEFAULT_PUBLISHER}/{repo or 'uncategorized'}"


def parse_user_repo(user_repo: str) -> tuple[str, str]:
    """`user/repo` with two safe names (letters, digits, `.`, `_`, `-`; not starting with
    a dot or dash). Raises `InvalidRequest`."""
    parts = user_repo.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
        raise InvalidRequest(
            f"invalid --user-repo {user_repo!r}: expected <user>/<repo>, each made of "
            "letters, digits, '.', '_' or '-' and starting with a letter or digit",
            param="user_repo",
        )
    return parts[0], parts[1]


def import_model(
    source: Path,
    models_dir: Path,
    *,
    mode: ImportMode = "move",
    user_repo: str | None = None,
    dry_run: bool = False,
    copy: CopyFn = shutil.copyfile,
) -> ImportResult:
    """Import `source` into `models_dir`. Raises `InvalidRequest` (not a GGUF, bad
    user/repo, bad mode, cross-device hard link), `ModelExists`, or `OSError` for I/O
    failures; on any failure no file is left under the target name."""
    if mode not in get_args(ImportMode):
        raise InvalidRequest(f"unknown import mode {mode!r}", param="mode")
    source = Path(os.path.abspath(source))
    _check_source(source)

    user_repo = user_repo if user_repo is not None else default_user_repo(source)
    user, repo = parse_user_repo(user_repo)
    target = safe_model_path(models_dir, f"{user}/{repo}/{source.name}")
    result = ImportResult(source, target, mode, dry_run, f"{user}/{repo}")
    if os.path.lexists(target):
        raise _exists(target)
    if dry_run:
        return result
    target.parent.mkdir(parents=True, exist_ok=True)
    warnings: tuple[str, ...] = ()
    if mode == "symbolic-link":
        _no_clobber(target, lambda: os.symlink(source.resolve(), target))
    elif mode == "hard-link":
        try:
            # The file a symbolic link points to, never the link itself.
            _no_clobber(target, lambda: os.link(source.resolve(), target))
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise InvalidRequest(
                    f"cannot hard-link {source} into {models_dir}: different filesystems; "
                    "use copy or symbolic-link",
                    param="mode",
                ) from exc
            raise
    elif mode == "copy":
        _copy_into_place(source, target, copy)
    elif source.is_symlink():
        warnings = _move_link(source, target)
    else:
        warnings = _move(source, target, copy)
    _fsync_dir(target.parent)
    return ImportResult(source, target, mode, dry_run, f"{user}/{repo}", warnings)


def _check_source(source: Path) -> None:
    if not source.is_file():
        raise InvalidRequest(f"no such file: {source}", param="path")
    if not source.name.lower().endswith(".gguf") or source.name.startswith("."):
        raise InvalidRequest(
            f"{source.name} does not look like a model file (expected a visible *.gguf file)",
            param="path",
        )
    if not is_gguf_file(source):
        raise InvalidRequest(f"{source} is not a GGUF file", param="path")
    try:
        read_header(source)
    except GgufError as exc:
        raise InvalidRequest(f"{source} is not a usable GGUF file: {exc}", param="path") from exc


def _exists(target: Path) -> ModelExists:
    return ModelExists(
        f"{target} already exists; remove it or choose another --user-repo",
        param="path",
        code="model_exists",
    )


def _no_clobber(target: Path, make: Callable[[], None]) -> None:
    try:
        make()
    except FileExistsError as exc:
        raise _exists(target) from exc


def _move(source: Path, target: Path, copy: CopyFn) -> tuple[str, ...]:
    try:
        _no_clobber(target, lambda: os.link(source, target))
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _copy_into_place(source, target, copy)  # another filesystem
    try:
        source.unlink()
    except OSError as exc:
        return (f"imported, but could not remove {source}: {exc.strerror or exc}",)
    return ()


def _move_link(source: Path, target: Path) -> tuple[str, ...]:
    """Moving a symbolic link moves the link, not the file it points to: the models
    folder gets a link to that file by its absolute path (a relative link would point
    elsewhere from there), then the user's link is removed. The file stays put."""
    pointed = source.resolve()
    _no_clobber(target, lambda: os.symlink(pointed, target))
    notes = (f"{source} is a symbolic link: the models folder now links to {pointed}",)
    try:
        source.unlink()
    except OSError as exc:
        return (*notes, f"imported, but could not remove {source}: {exc.strerror or exc}")
    return notes


def _copy_into_place(source: Path, target: Path, copy: CopyFn) -> None:
    tmp = target.with_name(f".{target.name}.partial-{secrets.token_hex(6)}")
    try:
        with open(tmp, "xb"):
            pass  # claim the temporary name
        copy(source, tmp)
        if tmp.stat().st_size != source.stat().st_size:
            raise OSError(errno.EIO, f"copy of {source} is incomplete")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        try:
            _no_clobber(target, lambda: os.link(tmp, target))
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if os.path.lexists(target):  # no hard links here: check, then rename
                raise _exists(target) from exc
            os.rename(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
