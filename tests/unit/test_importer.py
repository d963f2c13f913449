"""`import_model`: modes, dry run, refusals, and atomicity."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from daemon.catalog import scan
from daemon.errors import InvalidRequest, ModelExists
from daemon.importer import default_user_repo, import_model, parse_user_repo
from tests.fixtures.gguf_factory import write_gguf, write_not_gguf, write_truncated

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "downloads" / NAME
    write_gguf(path, vocab=500)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def test_default_user_repo() -> None:
    assert default_user_repo(Path(NAME)) == "imported-models/SmolLM2-135M-Instruct"
    assert default_user_repo(Path("Big-Q8_0-00001-of-00002.gguf")) == "imported-models/Big"
    assert default_user_repo(Path("we ird!name-Q4_K_M.gguf")) == "imported-models/we-ird-name"


def test_move_by_default(source: Path, models: Path) -> None:
    data = source.read_bytes()
    result = import_model(source, models)
    target = models / "imported-models" / "SmolLM2-135M-Instruct" / NAME
    assert (result.target, result.mode, result.dry_run) == (target.resolve(), "move", False)
    assert result.user_repo == "imported-models/SmolLM2-135M-Instruct"
    assert not source.exists()
    assert target.read_bytes() == data
    assert listing(models) == [f"imported-models/SmolLM2-135M-Instruct/{NAME}"]
    assert scan([models]).resolve("smollm2-135m-instruct").path == (
        f"imported-models/SmolLM2-135M-Instruct/{NAME}"
    )


def test_move_across_filesystems_copies_then_removes(
    source: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def cross_device(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if Path(str(src)) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", cross_device)
    data = source.read_bytes()
    result = import_model(source, models, user_repo="me/smol")
    assert result.target.read_bytes() == data and not source.exists()
    assert listing(models) == [f"me/smol/{NAME}"]


def test_copy(source: Path, models: Path) -> None:
    result = import_model(source, models, mode="copy", user_repo="alice/smol")
    assert source.exists()
    assert result.target == (models / "alice" / "smol" / NAME).resolve()
    assert result.target.read_bytes() == source.read_bytes()
    assert os.stat(result.target).st_ino != os.stat(source).st_ino
    assert listing(models) == [f"alice/smol/{NAME}"]  # no temp file left


def test_hard_link(source: Path, models: Path) -> None:
    result = import_model(source, models, mode="hard-link", user_repo="alice/smol")
    assert source.exists()
    assert os.stat(result.target).st_ino == os.stat(source).st_ino


def test_hard_link_across_filesystems_is_refused(
    source: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    with pytest.raises(InvalidRequest, match="different filesystems"):
        import_model(source, models, mode="hard-link", user_repo="alice/smol")


def test_symbolic_link(source: Path, models: Path) -> None:
    result = import_model(source, models, mode="symbolic-link", user_repo="alice/smol")
    assert result.target.is_symlink()
    assert Path(os.readlink(result.target)) == source.resolve()
    assert source.exists()
    assert scan([models]).resolve("alice/smol").abs_path.resolve() == source.resolve()


def test_dry_run_changes_nothing(source: Path, models: Path) -> None:
    result = import_model(source, models, mode="copy", dry_run=True)
    assert result.dry_run
    assert result.target == (models / "imported-models" / "SmolLM2-135M-Instruct" / NAME).resolve()
    assert source.exists() and not models.exists()


@pytest.mark.parametrize("mode", ["move", "copy", "hard-link", "symbolic-link"])
def test_refuses_to_overwrite(source: Path, models: Path, mode: str) -> None:
    target = models / "alice" / "smol" / NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious")
    with pytest.raises(ModelExists, match="already exists"):
        import_model(source, models, mode=mode, user_repo="alice/smol")  # type: ignore[arg-type]
    with pytest.raises(ModelExists):
        import_model(source, models, mode=mode, user_repo="alice/smol", dry_run=True)  # type: ignore[arg-type]
    assert target.read_bytes() == b"precious" and source.exists()
    assert listing(models) == [f"alice/smol/{NAME}"]


def test_overwrite_race_is_refused_atomically(source: Path, models: Path) -> None:
    target = models / "alice" / "smol" / NAME

    def copy_then_race(src: Path, dst: Path) -> None:
        dst.write_bytes(src.read_bytes())
        target.write_bytes(b"someone else")  # appears between the check and the link

    with pytest.raises(ModelExists):
        import_model(source, models, mode="copy", user_repo="alice/smol", copy=copy_then_race)
    assert target.read_bytes() == b"someone else"
    assert listing(models) == [f"alice/smol/{NAME}"]


def test_refuses_non_gguf_files(tmp_path: Path, models: Path) -> None:
    text = write_not_gguf(tmp_path / "notes.gguf")
    with pytest.raises(InvalidRequest, match="not a GGUF file"):
        import_model(text, models)
    readme = write_not_gguf(tmp_path / "README.md")
    with pytest.raises(InvalidRequest, match=r"\.gguf"):
        import_model(readme, models)
    broken = write_truncated(tmp_path / "broken-Q4_K_M.gguf")
    with pytest.raises(InvalidRequest, match="not a usable GGUF"):
        import_model(broken, models)
    with pytest.raises(InvalidRequest, match="no such file"):
        import_model(tmp_path / "missing.gguf", models)
    with pytest.raises(InvalidRequest, match="no such file"):
        import_model(tmp_path, models)
    assert not models.exists()
    assert text.exists() and broken.exists()


@pytest.mark.parametrize(
    "user_repo",
    [
        "alice",
        "alice/smol/extra",
        "../smol",
        "alice/..",
        "alice/.hidden",
        "/abs/x",
        "a b/c",
        "alice/",
        "alice\\x/y",
        "-x/y",
        "",
    ],
)
def test_refuses_bad_user_repo(source: Path, models: Path, user_repo: str) -> None:
    with pytest.raises(InvalidRequest, match="user"):
        import_model(source, models, user_repo=user_repo)
    assert source.exists() and not models.exists()


def test_parse_user_repo() -> None:
    assert parse_user_repo("lmstudio-community/Qwen2.5-7B-Instruct-GGUF") == (
        "lmstudio-community",
        "Qwen2.5-7B-Instruct-GGUF",
    )


def test_refuses_a_symlinked_publisher_leaving_the_models_dir(
    source: Path, models: Path, tmp_path: Path
) -> None:
    (tmp_path / "outside").mkdir()
    models.mkdir()
    (models / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidRequest, match="leaves"):
        import_model(source, models, user_repo="evil/smol")
    assert listing(tmp_path / "outside") == []


def test_unknown_mode(source: Path, models: Path) -> None:
    with pytest.raises(InvalidRequest, match="mode"):
        import_model(source, models, mode="teleport")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["copy", "move-across-devices"])
def test_interrupted_copy_leaves_nothing_behind(
    source: Path, models: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "move-across-devices":
        monkeypatch.setattr(os, "link", _no_link)

    def dies_halfway(src: Path, dst: Path) -> None:
        data = src.read_bytes()
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        import_model(
            source,
            models,
            mode="move" if mode != "copy" else "copy",
            user_repo="alice/smol",
            copy=dies_halfway,
        )
    assert source.exists()
    assert listing(models) == []  # neither the model name nor a .partial file
    assert len(scan([models])) == 0


def test_short_copy_is_detected(source: Path, models: Path) -> None:
    def short(src: Path, dst: Path) -> None:
        dst.write_bytes(src.read_bytes()[:-1])

    with pytest.raises(OSError, match="incomplete"):
        import_model(source, models, mode="copy", user_repo="alice/smol", copy=short)
    assert listing(models) == []


def test_partial_file_is_invisible_to_the_catalog(source: Path, models: Path) -> None:
    folder = models / "alice" / "smol"
    folder.mkdir(parents=True)
    (folder / f".{NAME}.partial-0123456789ab").write_bytes(source.read_bytes())
    assert len(scan([models])) == 0


def test_filesystem_without_hard_links_falls_back_to_rename(
    source: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "link", _no_link)
    result = import_model(source, models, mode="copy", user_repo="alice/smol")
    assert result.target.read_bytes() == source.read_bytes()
    assert listing(models) == [f"alice/smol/{NAME}"]


def _no_link(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")
