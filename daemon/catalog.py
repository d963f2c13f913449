"""Models on disk: discovery, keys, name resolution, wire shapes.

`scan(models_dirs, cache)` walks the models directories (LM Studio layout
`<dir>/<publisher>/<repo>/<file>.gguf`, MLX model directories) and returns an immutable
`Catalog`. GGUF headers are read through `HeaderCache`, so a rescan with unchanged files
reads no header. A corrupt file becomes a record with `error` set; nothing in a models
directory can make a listing fail. Key rules: docs/model-keys.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from daemon.errors import AmbiguousModel, GgufError, InvalidRequest, ModelNotFound
from daemon.gguf import GgufInfo, read_gguf_info
from daemon.header_cache import HeaderCache
from daemon.model_keys import (
    EMBEDDING_KEY_PREFIX,
    display_name,
    format_params,
    mentions_tools,
    mlx_quant_name,
    params_from_name,
    quant_bits,
    quant_from_name,
    split_part,
    strip_name,
    variant_rank,
)
from lms.api.models import ModelInfo

log = logging.getLogger(__name__)

ModelFormat = Literal["gguf", "mlx", "remote"]  # remote: served by an upstream (daemon/remote)
ModelType = Literal["llm", "vlm", "embeddings"]
ModelState = Literal["loaded", "not-loaded"]
HeaderReader = Callable[[Path], GgufInfo]

NO_PUBLISHER = "local"  # publisher of a model lying directly in a models directory


@dataclass(frozen=True, slots=True)
class ModelRecord:
    key: str
    path: str  # relative to models_dir, "/"-separated; a directory for MLX
    abs_path: Path
    models_dir: Path
    publisher: str
    repo: str | None
    format: ModelFormat
    type: ModelType
    arch: str | None
    quantization: str | None
    max_context_length: int | None
    size_bytes: int
    params_string: str | None
    capabilities: tuple[str, ...]
    display_name: str
    files: tuple[Path, ...]
    mmproj: Path | None = None
    mmproj_bytes: int = 0  # the projector file's size (a vlm's second file)
    error: str | None = None
    parameter_count: int | None = None
    gguf: GgufInfo | None = None

    @property
    def variant_key(self) -> str:
        """`key@quant` (lowercase quant); the bare key when the quantization is unknown."""
        return f"{self.key}@{self.quantization.lower()}" if self.quantization else self.key


class Catalog:
    """An immutable snapshot of the models found by one scan."""

    def __init__(self, records: Iterable[ModelRecord], models_dirs: Sequence[Path] = ()) -> None:
        self.records: tuple[ModelRecord, ...] = tuple(
            sorted(records, key=lambda r: (r.key, variant_rank(r.quantization, r.error), r.path))
        )
        self.models_dirs = tuple(models_dirs)
        exact: dict[str, list[ModelRecord]] = {}
        alias: dict[str, list[ModelRecord]] = {}
        for r in self.records:
            for name in (r.key, r.variant_key, r.path.lower(), str(r.abs_path).lower()):
                exact.setdefault(name, []).append(r)
            names = {f"{r.publisher}/{r.key}", f"{r.publisher}/{r.variant_key}"}
            if r.repo:
                names.add(f"{r.publisher}/{r.repo}".lower())
            if r.key.startswith(EMBEDDING_KEY_PREFIX):
                bare = r.key.removeprefix(EMBEDDING_KEY_PREFIX)
                names |= {bare, f"{bare}@{r.quantization.lower()}" if r.quantization else bare}
            for name in names:
                alias.setdefault(name.lower(), []).append(r)
        self._exact = {k: _unique(v) for k, v in exact.items()}
        self._alias = {k: _unique(v) for k, v in alias.items()}

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        return sorted({r.key for r in self.records})

    def variants(self, key: str) -> tuple[ModelRecord, ...]:
        """Records sharing `key`, the default variant first."""
        return self._exact.get(key.strip().lower(), ()) if "@" not in key else ()

    def resolve(self, name: str) -> ModelRecord:
        """Key, `key@quant`, alias (`publisher/repo`, `publisher/key[@quant]`) or relative
        path, case-insensitively. Raises `ModelNotFound` or `AmbiguousModel`."""
        wanted = name.strip().lower().removeprefix("./")
        group = self._exact.get(wanted) or self._alias.get(wanted)
        if not group:
            raise ModelNotFound(self._not_found_message(name))
        ranks = [variant_rank(r.quantization, r.error) for r in group]
        best = [r for r, rank in zip(group, ranks, strict=True) if rank == min(ranks)]
        if len(best) > 1:
            raise AmbiguousModel(name, sorted(r.path for r in best))
        return best[0]

    def public_id(self, record: ModelRecord) -> str:
        """The shortest name that resolves to exactly this record."""
        for name in (record.key, record.variant_key, f"{record.publisher}/{record.variant_key}"):
            try:
                if self.resolve(name) is record:
                    return name
            except (ModelNotFound, AmbiguousModel):
                pass
        return record.path

    def search(self, text: str) -> list[ModelRecord]:
        """Fuzzy match for pickers: exact name, key prefix, substring of key/path, then
        subsequence of the key. Every whitespace-separated word must match."""
        words = text.lower().split()
        scored: list[tuple[int, int, ModelRecord]] = []
        for i, r in enumerate(self.records):
            score = max((_score(w, r) for w in words), default=0) if words else 0
            if all(_score(w, r) < 9 for w in words):
                scored.append((score, i, r))
        return [r for _, _, r in sorted(scored, key=lambda s: (s[0], s[1]))]

    def _not_found_message(self, name: str) -> str:
        keys = self.keys()
        if not keys:
            where = ", ".join(str(d) for d in self.models_dirs) or "the models directory"
            return f"model {name!r} not found: no models in {where}"
        shown = ", ".join(keys[:30]) + (f" and {len(keys) - 30} more" if len(keys) > 30 else "")
        return f"model {name!r} not found; available models: {shown}"


def _unique(records: list[ModelRecord]) -> tuple[ModelRecord, ...]:
    seen: dict[int, ModelRecord] = {}
    for r in records:
        seen.setdefault(id(r), r)
    return tuple(seen.values())


def _score(word: str, r: ModelRecord) -> int:
    names = (r.key, r.variant_key, f"{r.publisher}/{r.key}")
    if word in names:
        return 0
    if r.key.startswith(word):
        return 1
    if word in r.key:
        return 2
    if word in r.path.lower() or word in r.display_name.lower():
        return 3
    it = iter(r.key)
    if all(c in it for c in word):
        return 4
    return 9


def to_v0_dict(
    record: ModelRecord,
    state: ModelState,
    loaded_context_length: int | None = None,
    *,
    model_id: str | None = None,
) -> dict[str, object]:
    """One item of `GET /api/v0/models` (`model_id` defaults to the record's key)."""
    out: dict[str, object] = {
        "id": model_id or record.key,
        "object": "model",
        "type": record.type,
        "publisher": record.publisher,
        "arch": record.arch,
        "compatibility_type": record.format,
        "quantization": record.quantization,
        "state": state,
        "max_context_length": record.max_context_length,
    }
    if loaded_context_length is not None:
        out["loaded_context_length"] = loaded_context_length
    out["capabilities"] = list(record.capabilities)
    return out


def to_ls_json(record: ModelRecord, *, model_key: str | None = None) -> ModelInfo:
    """LM Studio's `ModelInfo` as `lms ls --json` prints it (MLX reports `safetensors`)."""
    embedding = record.type == "embeddings"
    out: ModelInfo = {
        "type": "embedding" if embedding else "llm",
        "modelKey": model_key or record.key,
        "format": "gguf" if record.format == "gguf" else "safetensors",
        "displayName": record.display_name,
        "publisher": record.publisher,
        "path": record.path,
        "sizeBytes": record.size_bytes,
        "indexedModelIdentifier": record.path,
        "deviceIdentifier": None,
        "maxContextLength": record.max_context_length,
    }
    if record.params_string:
        out["paramsString"] = record.params_string
    if record.arch:
        out["architecture"] = record.arch
    if record.quantization:
        out["quantization"] = {"name": record.quantization, "bits": quant_bits(record.quantization)}
    if not embedding:
        out["vision"] = record.type == "vlm"
        out["trainedForToolUse"] = "tool_use" in record.capabilities
    return out


def safe_model_path(models_dir: Path, relative: str) -> Path:
    """`models_dir / relative`, refusing absolute paths, `..`, backslashes and any path
    that leaves `models_dir` through a symlink. Raises `InvalidRequest`."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise InvalidRequest(f"invalid model path {relative!r}", param="path")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", relative) or ".." in rel.parts:
        raise InvalidRequest(
            f"model path {relative!r} must be relative to the models directory", param="path"
        )
    base = Path(models_dir).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise InvalidRequest(f"model path {relative!r} leaves the models directory", param="path")
    return base / rel


# --- scanning -------------------------------------------------------------------------


@dataclass(slots=True)
class _Scan:
    models_dir: Path
    cache: HeaderCache | None
    reader: HeaderReader
    seen: set[str]
    records: list[ModelRecord]

    def info(self, path: Path, st: os.stat_result) -> GgufInfo | str:
        name = str(path)
        self.seen.add(name)
        if self.cache is not None:
            hit = self.cache.get(name, st.st_size, st.st_mtime_ns)
            if hit is not None:
                return hit
        try:
            result: GgufInfo | str = self.reader(path)
        except GgufError as exc:
            result = str(exc)
        if self.cache is not None:
            self.cache.put(name, st.st_size, st.st_mtime_ns, result)
        return result


def scan(
    models_dirs: Iterable[Path | str],
    cache: HeaderCache | None = None,
    *,
    reader: HeaderReader = read_gguf_info,
) -> Catalog:
    """Find every model under `models_dirs`. Saves `cache` when it changed (best effort)."""
    dirs = [Path(os.path.abspath(d)) for d in models_dirs]
    seen: set[str] = set()
    records: list[ModelRecord] = []
    for d in dirs:
        if d.is_dir():
            _walk(_Scan(d, cache, reader, seen, records), d, (), set())
    if cache is not None:
        cache.retain(seen)
        try:
            cache.save()
        except OSError as exc:
            log.warning("cannot save the catalog cache %s: %s", cache.path, exc)
    return Catalog(records, dirs)


def _walk(s: _Scan, folder: Path, rel: tuple[str, ...], visited: set[tuple[int, int]]) -> None:
    try:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in visited:
            return  # a symlink cycle
        visited.add((st.st_dev, st.st_ino))
        entries = sorted(
            (e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name
        )
    except OSError:
        return
    files: dict[str, os.stat_result] = {}
    subdirs: list[str] = []
    for e in entries:
        if ".partial-" in e.name:
            continue
        try:
            if e.is_dir():
                subdirs.append(e.name)
            elif e.is_file():
                files[e.name] = e.stat()
        except OSError:
            continue
    if rel and "config.json" in files and any(n.endswith(".safetensors") for n in files):
        s.records.append(_mlx_record(s.models_dir, folder, rel))
        return
    _gguf_records(s, folder, rel, {n: st for n, st in files.items() if n.lower().endswith(".gguf")})
    for name in subdirs:
        _walk(s, folder / name, (*rel, name), visited)


def _gguf_records(
    s: _Scan, folder: Path, rel: tuple[str, ...], files: dict[str, os.stat_result]
) -> None:
    projectors = sorted(n for n in files if "mmproj" in n.lower())
    models: dict[str, list[str]] = {}  # group name -> file names (split parts in order)
    for name in files:
        if name in projectors:
            continue
        part = split_part(name)
        models.setdefault(f"{part[0]}\0{part[2]}" if part else name, []).append(name)
    infos: dict[str, GgufInfo | str] = {}
    for names in models.values():
        for n in names:
            infos[n] = s.info(folder / n, files[n])
    real_projectors = list(projectors)
    for name, info in infos.items():
        if isinstance(info, GgufInfo) and info.is_projector and name in models:
            real_projectors.append(name)
            del models[name]
    mmproj = folder / real_projectors[0] if real_projectors else None
    for names in models.values():
        record = _gguf_record(s.models_dir, folder, rel, sorted(names), files, infos, mmproj)
        s.records.append(record)


def _gguf_record(
    models_dir: Path,
    folder: Path,
    rel: tuple[str, ...],
    names: list[str],
    files: dict[str, os.stat_result],
    infos: dict[str, GgufInfo | str],
    mmproj: Path | None,
) -> ModelRecord:
    part = split_part(names[0])
    error: str | None = None
    if part:
        numbered = {p[1]: n for n in names if (p := split_part(n))}
        missing = [i for i in range(1, part[2] + 1) if i not in numbered]
        if missing:
            error = f"split model is missing part(s) {', '.join(map(str, missing))} of {part[2]}"
        names = [numbered[i] for i in sorted(numbered)]
    first = names[0]
    stem = part[0] if part else first[: -len(".gguf")]
    base = strip_name(stem)
    head = infos[first]
    info = head if isinstance(head, GgufInfo) else None
    if error is None:
        bad = [(n, v) for n in names if isinstance(v := infos[n], str)]
        if bad:
            error = bad[0][1] if len(names) == 1 else f"{bad[0][0]}: {bad[0][1]}"
    params = sum(i.parameter_count for i in (infos[n] for n in names) if isinstance(i, GgufInfo))
    mtype: ModelType = "llm"
    key = base.lower()
    if info is not None and info.is_embedding:
        mtype = "embeddings"
        if not key.startswith(EMBEDDING_KEY_PREFIX):
            key = EMBEDDING_KEY_PREFIX + key
    elif mmproj is not None:
        mtype = "vlm"
    relpath = "/".join((*rel, first))
    return ModelRecord(
        key=key,
        path=relpath,
        abs_path=folder / first,
        models_dir=models_dir,
        publisher=rel[0] if rel else NO_PUBLISHER,
        repo=rel[1] if len(rel) > 1 else None,
        format="gguf",
        type=mtype,
        arch=info.architecture if info else None,
        quantization=info.quantization if info else quant_from_name(stem),
        max_context_length=info.context_length if info else None,
        size_bytes=sum(files[n].st_size for n in names),
        params_string=format_params(params) if params else (info.size_label if info else None),
        capabilities=("tool_use",) if info and info.has_tool_template else (),
        display_name=display_name(base),
        files=tuple(folder / n for n in names),
        mmproj=mmproj if mtype == "vlm" else None,
        mmproj_bytes=files[mmproj.name].st_size if mmproj is not None and mtype == "vlm" else 0,
        error=error,
        parameter_count=params or None,
        gguf=info,
    )


def _mlx_record(models_dir: Path, folder: Path, rel: tuple[str, ...]) -> ModelRecord:
    files: list[Path] = []
    size = 0
    for root, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for n in sorted(filenames):
            if not n.startswith("."):
                p = Path(root) / n
                files.append(p)
                with contextlib.suppress(OSError):
                    size += p.stat().st_size
    error: str | None = None
    config: dict[str, object] = {}
    try:
        loaded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")
        config = loaded
    except (OSError, ValueError) as exc:
        error = f"config.json: {exc}"
    text = config.get("text_config")
    text_config = text if isinstance(text, dict) else {}
    ctx = config.get("max_position_embeddings", text_config.get("max_position_embeddings"))
    name = rel[-1]
    base = strip_name(name)
    return ModelRecord(
        key=base.lower(),
        path="/".join(rel),
        abs_path=folder,
        models_dir=models_dir,
        publisher=rel[0] if len(rel) > 1 else NO_PUBLISHER,
        repo=rel[1] if len(rel) > 1 else name,
        format="mlx",
        type="vlm" if "vision_config" in config else "llm",
        arch=str(config["model_type"]) if "model_type" in config else None,
        quantization=mlx_quant_name(config),
        max_context_length=ctx if isinstance(ctx, int) else None,
        size_bytes=size,
        params_string=params_from_name(name),
        capabilities=("tool_use",) if _mlx_tool_template(folder) else (),
        display_name=display_name(base),
        files=tuple(files),
        error=error,
    )


def _mlx_tool_template(folder: Path) -> bool:
    try:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return mentions_tools(jinja.read_text("utf-8"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    template = cfg.get("chat_template") if isinstance(cfg, dict) else None
    return isinstance(template, str | list) and mentions_tools(json.dumps(template))
