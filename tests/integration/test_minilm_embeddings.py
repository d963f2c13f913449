"""A real embedding model end to end: all-MiniLM-L6-v2 converted to GGUF by a fixture
(tests/fixtures/minilm.py), read by our header reader and catalog, loaded by the llama.cpp
engine in a real worker, and checked against sentence-transformers' own embeddings."""

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.catalog import scan
from daemon.engines.base import LoadSpec
from daemon.engines.host import WorkerHandle
from daemon.gguf import read_gguf_info
from tests.fixtures import minilm

NEEDS_LLAMA = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
_missing = minilm.unavailable_reason()
pytestmark = [pytest.mark.model, pytest.mark.skipif(_missing is not None, reason=_missing or "")]

MIN_COSINE = 0.999  # measured: >= 0.9999985 (F16 weights against float32 PyTorch)


@pytest.fixture(scope="session")
def minilm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minilm.minilm_gguf_once(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    return minilm.load_reference()


@pytest.fixture
async def embedder(minilm_gguf: Path) -> AsyncIterator[WorkerHandle]:
    handle = await WorkerHandle.start(LoadSpec(str(minilm_gguf), "llama_cpp", embedding=True))
    try:
        yield handle
    finally:
        await handle.close()


def test_conversion_writes_one_complete_file(minilm_gguf: Path) -> None:
    assert sorted(p.name for p in minilm_gguf.parent.iterdir()) == [minilm_gguf.name]
    assert 40e6 < minilm_gguf.stat().st_size < 50e6


def test_header_says_f16_bert_embedding_model(minilm_gguf: Path) -> None:
    info = read_gguf_info(minilm_gguf)
    assert info.architecture == "bert"
    assert info.is_embedding
    assert info.quantization == "F16"
    assert info.file_type == 1
    assert info.pooling_type == 1  # MEAN, from the sentence-transformers pooling config
    assert info.context_length == 512
    assert info.embedding_length == 384
    assert info.block_count == 6
    assert info.vocab_size == 30522
    assert info.chat_template is None
    assert 22_000_000 < info.parameter_count < 23_000_000  # "23M", the pooler dropped


def test_catalog_lists_it_as_an_embedding_model(minilm_gguf: Path) -> None:
    models_dir = minilm_gguf.parents[2]
    catalog = scan([models_dir])
    [key] = catalog.keys()
    [record] = catalog.variants(key)
    assert record.type == "embeddings"
    assert record.format == "gguf"
    assert record.arch == "bert"
    assert record.quantization == "F16"
    assert record.max_context_length == 512
    assert record.abs_path == minilm_gguf
    assert record.publisher == "sentence-transformers"


@NEEDS_LLAMA
async def test_embeddings_match_sentence_transformers(
    embedder: WorkerHandle, reference: list[dict[str, Any]]
) -> None:
    info = embedder.info
    assert info.embedding
    assert info.arch == "bert"
    assert info.quant == "F16"

    singles = []
    for item in reference:
        result = await embedder.embed([item["text"]])
        [vector] = result.vectors
        # [CLS] ... [SEP], tokenized exactly as the Hugging Face tokenizer does it
        assert result.prompt_tokens == len(item["token_ids"])
        got = np.asarray(vector)
        want = np.asarray(item["embedding"])
        assert got.shape == (384,)
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5
        cosine = float(got @ want / np.linalg.norm(want))
        assert cosine >= MIN_COSINE, f"{item['text']!r}: cosine {cosine:.6f}"
        singles.append(got)

    batch = await embedder.embed([item["text"] for item in reference])
    assert batch.prompt_tokens == sum(len(item["token_ids"]) for item in reference)
    assert len(batch.vectors) == len(reference)
    # Batched, llama.cpp computes in other shapes: the same vectors up to rounding
    # (measured: components within 7e-5, cosine >= 0.9999999).
    for batched, single, item in zip(batch.vectors, singles, reference, strict=True):
        assert float(np.asarray(batched) @ single) >= 0.99999, item["text"]
        assert float(np.asarray(batched) @ np.asarray(item["embedding"])) >= MIN_COSINE


@NEEDS_LLAMA
async def test_embeddings_rank_by_meaning(embedder: WorkerHandle) -> None:
    texts = ["A man is playing a guitar.", "Someone strums a guitar.", "The stock market fell."]
    vectors = np.asarray((await embedder.embed(texts)).vectors)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5 > unrelated
