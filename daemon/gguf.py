"""A small, fast GGUF header reader: metadata and tensor infos, never the weights.

Reads GGUF v2/v3 (little-endian) through a buffered file with `struct`. Every metadata
key/value is read, but arrays are only kept when they are small: the tokenizer's
vocabulary, merges and token types (hundreds of thousands of items) are skipped without
building Python objects, keeping only their length. Tensor infos are read to count the
parameters. Anything malformed raises `GgufError` with the reason and the byte offset;
lengths and counts are checked against the file size before anything is allocated, so a
corrupt header never becomes a `MemoryError`.

No mmap on purpose: a file truncated while mapped (a download being replaced) would
kill the daemon with SIGBUS.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from daemon.errors import GgufError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

_CHUNK = 1 << 20
_MAX_STRING = 64 << 20  # no key or value string in a real header comes near this
_MAX_DIMS = 8  # GGML_MAX_DIMS is 4; leave room
_KEEP_ARRAY_ITEMS = 1024  # numeric arrays up to this length are kept (per-layer values)
_KEEP_STRING_ARRAY_ITEMS = 64

# GGUF value types -> (struct format, size). 8 = string, 9 = array.
_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_STRING, _ARRAY = 8, 9
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# llama.cpp's LLAMA_FTYPE (gguf-py `LlamaFileType`); bit 10 marks a guessed type.
FILE_TYPES: Mapping[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip
_FTYPE_GUESSED = 1024

# ggml tensor types (gguf-py `GGMLQuantizationType`), for files without general.file_type.
TENSOR_TYPES: Mapping[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip

# Encoder-only architectures llama.cpp runs as embedding models.
EMBEDDING_ARCHS = frozenset({
    "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
    "jina-bert-v3", "gemma-embedding", "t5encoder",
})  # fmt: skip
_EMBEDDING_POOLING = frozenset({1, 2, 3})  # MEAN, CLS, LAST (not NONE, not RANK)
_TOOLS_RE = re.compile(r"\btools\b")


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """A metadata array too long to keep: only its item type and length."""

    item_type: int
    length: int


MetaValue = int | float | bool | str | tuple[object, ...] | ArrayInfo


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


@dataclass(frozen=True, slots=True)
class GgufHeader:
    version: int
    metadata: Mapping[str, MetaValue]
    tensors: tuple[TensorInfo, ...]


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What the catalog and the memory estimates need from a header.

    `is_embedding` rule: the architecture is an encoder-only one (`EMBEDDING_ARCHS`), or
    `{arch}.pooling_type` is MEAN/CLS/LAST and the file has no chat template (decoder
    models converted for embeddings, e.g. Qwen3-Embedding). `head_count`/`head_count_kv`
    given per layer (arrays) are reported as their maximum, the conservative value for
    KV-cache estimates. `parameter_count` covers this file's tensors only (one part of a
    split model).
    """

    version: int
    architecture: str | None
    name: str | None
    general_type: str | None
    size_label: str | None
    context_length: int | None
    file_type: int | None
    quantization: str | None
    parameter_count: int
    tensor_count: int
    chat_template: str | None
    has_tool_template: bool
    is_embedding: bool
    is_projector: bool
    pooling_type: int | None
    split_count: int
    split_no: int
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    vocab_size: int | None

    def to_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> GgufInfo:
        """Inverse of `to_dict`; raises `GgufError` when a field is missing or mistyped."""
        try:
            info = cls(**{name: data[name] for name in cls.__dataclass_fields__})  # type: ignore[arg-type]
        except (KeyError, TypeError) as exc:
            raise GgufError(f"bad cached header: {exc}") from exc
        for name in ("version", "parameter_count", "tensor_count", "split_count", "split_no"):
            if type(getattr(info, name)) is not int:
                raise GgufError(f"bad cached header: {name} is not an int")
        return info


class _Reader:
    """Sequential little-endian reads over a file, refilled in 1 MiB chunks."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self._buf = b""
        self._pos = 0  # index into _buf
        self._base = 0  # file offset of _buf[0]

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def remaining(self) -> int:
        return self._size - self.offset

    def _fill(self, n: int, what: str) -> None:
        """Make at least n bytes available at _pos."""
        have = len(self._buf) - self._pos
        if have >= n:
            return
        if n > self.remaining():
            raise GgufError(f"truncated: {what} at offset {self.offset} runs past end of file")
        more = self._f.read(max(n - have, _CHUNK))
        self._base += self._pos
        self._buf = self._buf[self._pos :] + more
        self._pos = 0
        if len(self._buf) < n:
            raise GgufError(f"truncated: {what} at offset {self.offset} runs past end of file")

    def unpack(self, fmt: struct.Struct, what: str) -> object:
        self._fill(fmt.size, what)
        (value,) = fmt.unpack_from(self._buf, self._pos)
        self._pos += fmt.size
        return value

    def u32(self, what: str) -> int:
        self._fill(4, what)
        (value,) = _U32.unpack_from(self._buf, self._pos)
        self._pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self._fill(8, what)
        (value,) = _U64.unpack_from(self._buf, self._pos)
        self._pos += 8
        return int(value)

    def raw(self, n: int, what: str) -> bytes:
        self._fill(n, what)
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining():
            raise GgufError(f"truncated: {what} at offset {self.offset} runs past end of file")
        have = len(self._buf) - self._pos
        if n <= have:
            self._pos += n
            return
        self._f.seek(self.offset + n)
        self._base = self.offset + n
        self._buf, self._pos = b"", 0

    def string(self, what: str, *, strict: bool) -> str:
        length = self.u64(what)
        if length > _MAX_STRING or length > self.remaining():
            raise GgufError(f"corrupt: {what} at offset {self.offset - 8} has length {length}")
        data = self.raw(length, what)
        try:
            return data.decode("utf-8", errors="strict" if strict else "replace")
        except UnicodeDecodeError as exc:
            raise GgufError(
                f"corrupt: {what} at offset {self.offset - length} is not valid UTF-8"
            ) from exc

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` length-prefixed strings without decoding them."""
        buf, pos = self._buf, self._pos
        while count:
            if pos + 8 > len(buf):
                self._pos = pos
                self._fill(8, what)
                buf, pos = self._buf, self._pos
            (length,) = _U64.unpack_from(buf, pos)
            end = pos + 8 + length
            if end > len(buf):
                self._pos = pos + 8
                if length > _MAX_STRING:
                    raise GgufError(
                        f"corrupt: {what} item at offset {self.offset - 8} has length {length}"
                    )
                self.skip(length, what)
                buf, pos = self._buf, self._pos
            else:
                pos = end
            count -= 1
        self._pos = pos


def _read_value(r: _Reader, vtype: int, key: str, depth: int = 0) -> MetaValue:
    scalar = _SCALARS.get(vtype)
    if scalar is not None:
        return r.unpack(scalar, f"value of {key!r}")  # type: ignore[return-value]
    if vtype == _STRING:
        return r.string(f"value of {key!r}", strict=False)
    if vtype != _ARRAY:
        raise GgufError(f"corrupt: unknown value type {vtype} for {key!r} at offset {r.offset}")
    if depth > 2:
        raise GgufError(f"corrupt: arrays nested too deep in {key!r}")
    item_type = r.u32(f"array type of {key!r}")
    count = r.u64(f"array length of {key!r}")
    item = _SCALARS.get(item_type)
    min_size = item.size if item is not None else 8 if item_type == _STRING else 12
    if item_type not in _SCALARS and item_type not in (_STRING, _ARRAY):
        raise GgufError(f"corrupt: unknown array item type {item_type} for {key!r}")
    if count * min_size > r.remaining():
        raise GgufError(f"truncated: array {key!r} of {count} items runs past end of file")
    if item is not None:
        if count > _KEEP_ARRAY_ITEMS:
            r.skip(count * item.size, f"array {key!r}")
            return ArrayInfo(item_type, count)
        data = r.raw(count * item.size, f"array {key!r}")
        return tuple(v for (v,) in item.iter_unpack(data))
    if item_type == _STRING:
        if count > _KEEP_STRING_ARRAY_ITEMS:
            r.skip_strings(count, f"array {key!r}")
            return ArrayInfo(item_type, count)
        return tuple(r.string(f"array {key!r}", strict=False) for _ in range(count))
    for _ in range(count):  # arrays of arrays: rare, never kept
        _read_value(r, _ARRAY, key, depth + 1)
    return ArrayInfo(item_type, count)


def _read(f: BinaryIO, size: int) -> GgufHeader:
    r = _Reader(f, size)
    magic = r.raw(4, "magic") if size >= 4 else b""
    if magic != GGUF_MAGIC:
        raise GgufError("not a GGUF file (bad magic)")
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version and version & 0xFFFF == 0:
            raise GgufError("big-endian GGUF files are not supported")
        raise GgufError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # every KV needs at least 13 bytes and every tensor info at least 24
    if n_kv * 13 + n_tensors * 24 > r.remaining():
        raise GgufError(
            f"truncated or corrupt: the header declares {n_kv} metadata entries "
            f"and {n_tensors} tensors, more than {size} bytes can hold"
        )
    metadata: dict[str, MetaValue] = {}
    for _ in range(n_kv):
        key = r.string("metadata key", strict=True)
        vtype = r.u32(f"type of {key!r}")
        metadata[key] = _read_value(r, vtype, key)
    tensors: list[TensorInfo] = []
    for _ in range(n_tensors):
        name = r.string("tensor name", strict=False)
        n_dims = r.u32(f"dims of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise GgufError(f"corrupt: tensor {name!r} has {n_dims} dimensions")
        dims = tuple(r.u64(f"shape of tensor {name!r}") for _ in range(n_dims))
        ggml_type = r.u32(f"type of tensor {name!r}")
        offset = r.u64(f"offset of tensor {name!r}")
        tensors.append(TensorInfo(name, dims, ggml_type, offset))
    return GgufHeader(version, metadata, tuple(tensors))


def read_header(path: Path | str) -> GgufHeader:
    """Read the metadata and tensor infos of a GGUF file. Raises `GgufError`."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            return _read(f, size)
    except GgufError:
        raise
    except OSError as exc:
        raise GgufError(f"cannot read {path}: {exc.strerror or exc}") from exc


def is_gguf_file(path: Path | str) -> bool:
    """True when the file starts with the GGUF magic (no other check)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _int(meta: Mapping[str, MetaValue], key: str) -> int | None:
    value = meta.get(key)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, tuple):
        ints = [v for v in value if type(v) is int]
        return max(ints) if ints and len(ints) == len(value) else None
    return None


def _str(meta: Mapping[str, MetaValue], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None


def quantization_name(file_type: int | None, tensors: tuple[TensorInfo, ...] = ()) -> str | None:
    """`general.file_type` as llama.cpp names it; without one, the ggml type holding most
    of the weights of the 2-D tensors."""
    if file_type is not None:
        return FILE_TYPES.get(file_type & ~_FTYPE_GUESSED)
    weights: dict[int, int] = {}
    for t in tensors:
        if len(t.dims) >= 2:
            weights[t.ggml_type] = weights.get(t.ggml_type, 0) + t.n_elements
    if not weights:
        return None
    return TENSOR_TYPES.get(max(weights, key=lambda k: weights[k]))


def info_from_header(header: GgufHeader) -> GgufInfo:
    meta = header.metadata
    arch = _str(meta, "general.architecture")
    a = arch or ""
    file_type = _int(meta, "general.file_type")
    template = _str(meta, "tokenizer.chat_template")
    pooling = _int(meta, f"{a}.pooling_type")
    general_type = _str(meta, "general.type")
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, ArrayInfo):
        vocab: int | None = tokens.length
    elif isinstance(tokens, tuple):
        vocab = len(tokens)
    else:
        vocab = _int(meta, f"{a}.vocab_size")
    is_embedding = a in EMBEDDING_ARCHS or (pooling in _EMBEDDING_POOLING and template is None)
    return GgufInfo(
        version=header.version,
        architecture=arch,
        name=_str(meta, "general.name"),
        general_type=general_type,
        size_label=_str(meta, "general.size_label"),
        context_length=_int(meta, f"{a}.context_length"),
        file_type=file_type,
        quantization=quantization_name(file_type, header.tensors),
        parameter_count=sum(t.n_elements for t in header.tensors),
        tensor_count=len(header.tensors),
        chat_template=template,
        has_tool_template=bool(template and _TOOLS_RE.search(template)),
        is_embedding=is_embedding,
        is_projector=a == "clip" or general_type == "mmproj",
        pooling_type=pooling,
        split_count=_int(meta, "split.count") or 1,
        split_no=_int(meta, "split.no") or 0,
        block_count=_int(meta, f"{a}.block_count"),
        embedding_length=_int(meta, f"{a}.embedding_length"),
        head_count=_int(meta, f"{a}.attention.head_count"),
        head_count_kv=_int(meta, f"{a}.attention.head_count_kv"),
        key_length=_int(meta, f"{a}.attention.key_length"),
        value_length=_int(meta, f"{a}.attention.value_length"),
        vocab_size=vocab,
    )


def read_gguf_info(path: Path | str) -> GgufInfo:
    """Read a GGUF header and derive a `GgufInfo`. Raises `GgufError`."""
    return info_from_header(read_header(path))
