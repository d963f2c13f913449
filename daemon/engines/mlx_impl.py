"""The MLX engine (mlx-lm), run inside a worker process.

An MLX model is a directory (`config.json`, `*.safetensors`, a Hugging Face tokenizer).
mlx-lm loads it; generation is our own small loop over the model and its KV cache, so a
cancel is seen between prompt chunks and between tokens, each token can carry its
logprobs, and stop strings, limits and timing are shared with every engine
(streaming.py). Sampling uses mlx-lm's own samplers and logits processors.

A vision model (config.json with `vision_config`) loads through mlx-vlm instead and its
requests, with or without images, run there (mlx_vision.py); without mlx-vlm its load fails
and says so.

The context defaults to min(`max_position_embeddings`, 4096), like the llama.cpp engine.
MLX's KV cache grows as needed, so the context is a bound, not an allocation.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import mlx.core as mx
import mlx_lm
import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_logits_processors

from daemon.engines import mlx_sampling, mlx_vision
from daemon.engines.base import (
    ChatRequest,
    EmbedResult,
    EngineInfo,
    GenerationParams,
    GenerationRequest,
    LoadProgressCallback,
    LoadSpec,
    PromptInput,
    StreamEvent,
    keep_loading,
)
from daemon.engines.settings import ignored_settings
from daemon.engines.streaming import RawToken, prompt_tokens, shape_stream
from daemon.errors import EngineError, InvalidRequest, LoadFailed
from daemon.model_keys import mlx_quant_name

DEFAULT_CONTEXT = 4096
# The engine settings of a load (LoadSpec) that mlx-lm takes: none of llama.cpp's (threads,
# flash attention, KV types and pool, mmap/mlock, KV offload) and not the load seed yet;
# the load reply and the daemon's log name those given anyway.
MLX_SETTINGS: frozenset[str] = frozenset()
PREFILL_CHUNK = 512  # prompt tokens per model call; a cancel is seen between chunks
# Used when a model ships no chat template (EngineInfo.chat_template is then False).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def backend() -> str:
    """ "metal" on Apple silicon, "cuda" on an MLX CUDA build, else "cpu"."""
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return "cpu"


def runtime_name(library: str = "mlx-lm") -> str:
    """e.g. "mlx-lm-linux-x86_64-cpu" or "mlx-vlm-darwin-arm64-metal"."""
    return f"{library}-{sys.platform}-{platform.machine().lower()}-{backend()}"


def trained_context(config: dict[str, Any]) -> int | None:
    text = config.get("text_config")
    value = config.get("max_position_embeddings")
    if value is None and isinstance(text, dict):
        value = text.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def longest_token(hf: Any) -> int | None:
    """The most bytes of text one token can stand for (streaming.check_prompt_size): the
    longest vocabulary entry, special tokens included, in its stored form (byte-level and
    "▁" forms are never shorter than the text). None when the tokenizer normalizes text
    in a way that could make a token stand for more text than that (or cannot be read)."""
    try:
        normalizer = json.loads(hf.backend_tokenizer.to_str()).get("normalizer")
        if not _normalizer_only_expands(normalizer):
            return None
        longest = max((len(str(t).encode("utf-8")) for t in hf.get_vocab()), default=0)
    except Exception:  # a tokenizer without these parts: no bound
        return None
    return max(longest, 4)


def _normalizer_only_expands(normalizer: Any) -> bool:
    if normalizer is None:
        return True
    if not isinstance(normalizer, dict):
        return False
    kind = normalizer.get("type")
    if kind == "Sequence":
        return all(_normalizer_only_expands(n) for n in normalizer.get("normalizers") or [])
    if kind == "Prepend":
        return True
    # SentencePiece's space: one byte becomes three
    return (
        kind == "Replace"
        and normalizer.get("pattern") == {"String": " "}
        and normalizer.get("content") == "▁"
    )


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table (byte-level BPE tokens)."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    visible += range(ord("®"), ord("ÿ") + 1)
    table: dict[str, int] = {chr(b): b for b in visible}
    extra = 0
    for b in range(256):
        if b not in visible:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class TokenBytes:
    """A token's own bytes (possibly part of a UTF-8 character), from the tokenizer's
    vocabulary: byte-level BPE maps each character back to a byte; SentencePiece-style
    vocabularies use "▁" for a space and `<0xNN>` for raw bytes. Special tokens are empty
    text, as llama.cpp renders them."""

    def __init__(self, hf: Any) -> None:
        self._hf = hf
        decoder = json.loads(hf.backend_tokenizer.to_str()).get("decoder") or {}
        kinds = _decoder_kinds(decoder)
        self._byte_level = "ByteLevel" in kinds
        self._special = set(int(i) for i in hf.all_special_ids)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        hit = self._cache.get(token)
        if hit is None:
            hit = self._cache[token] = self._compute(token)
        return hit

    def _compute(self, token: int) -> bytes:
        if token in self._special:
            return b""
        text = self._hf.convert_ids_to_tokens(token)
        if not isinstance(text, str):
            return b""
        if self._byte_level:
            table = _unicode_to_byte()
            if all(c in table for c in text):
                return bytes(table[c] for c in text)
            return text.encode("utf-8")  # an added (non-special) token: its own text
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                pass
        return text.replace("\u2581", " ").encode("utf-8")


def _decoder_kinds(decoder: dict[str, Any]) -> set[str]:
    kinds = {str(decoder.get("type"))}
    for child in decoder.get("decoders") or []:
        if isinstance(child, dict):
            kinds |= _decoder_kinds(child)
    return kinds


class MlxEngine:
    def __init__(self) -> None:
        self._model: Any = None
        self._tokenizer: Any = None  # mlx-lm's TokenizerWrapper
        self._hf: Any = None  # the Hugging Face tokenizer inside it
        self._token_bytes: TokenBytes | None = None
        self._eos: frozenset[int] = frozenset()
        self._n_ctx = DEFAULT_CONTEXT
        self._n_vocab = 0
        self._max_token_bytes: int | None = None
        self._has_template = False
        self._path = ""
        # KV cache kept from the last request and the tokens it holds (None: unusable).
        self._cache: list[Any] | None = None
        self._cached: list[int] = []
        self._reused = 0  # prompt tokens the running request took from that cache
        self._structured: Any = None  # mlx_structured.StructuredFactory, built on first use
        self._vlm: mlx_vision.VisionModel | None = None  # a vision model (mlx-vlm), else mlx-lm's

    @property
    def model(self) -> Any:
        if self._model is None:
            raise EngineError("no model is loaded")
        return self._model

    # -- load ---------------------------------------------------------------------

    def load(self, spec: LoadSpec, progress: LoadProgressCallback = keep_loading) -> EngineInfo:
        # mlx-lm loads in one call that reports nothing: the daemon sees 0, then loaded.
        progress(0.0)
        path = Path(spec.model_path)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LoadFailed(f"not an MLX model directory (no config.json): {path}")
        if spec.embedding:
            raise LoadFailed("the MLX engine does not load embedding models")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LoadFailed(f"{path / 'config.json'} cannot be read: {exc}") from exc
        if not isinstance(config, dict):
            raise LoadFailed(f"{path / 'config.json'} is not a JSON object")
        if mlx_vision.is_vision(config):
            self._load_vision(path)
        else:
            self._load_text(path)
        self._n_vocab = _vocab_size(config) or len(self._hf)
        self._max_token_bytes = longest_token(self._hf)
        trained = trained_context(config)
        self._n_ctx = spec.context_length or min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        self._has_template = bool(getattr(self._hf, "chat_template", None))
        text = config.get("text_config")
        layers = config.get(
            "num_hidden_layers", text.get("num_hidden_layers") if isinstance(text, dict) else 0
        )
        vlm = self._vlm is not None
        return EngineInfo(
            runtime_name=runtime_name("mlx-vlm" if vlm else "mlx-lm"),
            runtime_version=mlx_vision.mlx_vlm_version() if vlm else str(mlx_lm.__version__),
            supported_formats=["mlx"],
            context_length=self._n_ctx,
            arch=str(config.get("model_type", "unknown")),
            quant=mlx_quant_name(config),
            n_gpu_layers=(int(layers) if backend() != "cpu" and isinstance(layers, int) else 0),
            embedding=False,
            chat_template=self._has_template,
            ignored_settings=ignored_settings(spec, MLX_SETTINGS),
        )

    def _load_text(self, path: Path) -> None:
        try:
            loaded = mlx_lm.load(str(path))
            model, tokenizer = loaded[0], loaded[1]
        except MemoryError as exc:
            raise LoadFailed(f"out of memory loading {path}") from exc
        except Exception as exc:  # mlx-lm raises ValueError, KeyError, OSError, ...
            raise LoadFailed(f"mlx-lm could not load {path}: {type(exc).__name__}: {exc}") from exc
        self._model, self._tokenizer, self._path = model, tokenizer, str(path)
        self._hf = tokenizer._tokenizer
        self._token_bytes = TokenBytes(self._hf)
        self._eos = frozenset(int(t) for t in tokenizer.eos_token_ids)

    def _load_vision(self, path: Path) -> None:
        vlm = mlx_vision.VisionModel(path)  # LoadFailed without mlx-vlm
        # The Hugging Face tokenizer stands for mlx-lm's wrapper: it renders chat
        # templates the same way (render_chat) and is what TokenBytes reads.
        self._vlm, self._model, self._path = vlm, vlm.model, str(path)
        self._tokenizer = self._hf = vlm.tokenizer
        self._token_bytes = TokenBytes(self._hf)
        self._eos = frozenset(vlm.eos_ids())

    # -- text -----------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        if self._tokenizer is None:
            raise EngineError("no model is loaded")
        kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt}
        if tools:
            kwargs["tools"] = tools
        if not self._has_template:
            kwargs["chat_template"] = CHATML
        try:
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except (jinja2.TemplateError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}") from exc
        return str(text)

    def tokenize(self, text: str) -> list[int]:
        """Special tokens parsed; BOS added (if the tokenizer adds one) unless the text
        (a rendered chat template, say) already starts with it."""
        if self._hf is None:
            raise EngineError("no model is loaded")
        bos = self._hf.bos_token
        add = not (isinstance(bos, str) and bos and text.startswith(bos))
        return [int(t) for t in self._hf.encode(text, add_special_tokens=add)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # -- generation -----------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        if self._vlm is not None:
            return self._generate_vision(self._vlm, request, cancelled, started)
        tokens = self._prompt_tokens(request)
        self._reused = 0
        params = request.params
        constraint = self._start_sampling(params)
        return shape_stream(
            self._tokens(tokens, params, constraint, cancelled),
            params=params,
            prompt_tokens=len(tokens),
            context_length=self._n_ctx,
            cancelled=cancelled,
            started=started,
            cached_tokens=lambda: self._reused,
        )

    def _start_sampling(self, params: GenerationParams) -> Any:
        """Seeds MLX's random numbers when the request brings a seed; returns its
        structured-output constraint (None without one)."""
        if params.seed is not None:
            mx.random.seed(params.seed & 0xFFFFFFFF)
        if params.structured is None:
            return None
        return self._structured_factory().constraint(params.structured)

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids (a chat rendered with the model's template),
        checked against the context and the vocabulary."""
        return prompt_tokens(
            request,
            self.render_chat,
            self.tokenize,
            self._n_ctx,
            self._n_vocab,
            self._max_token_bytes,
        )

    def _generate_vision(
        self,
        vlm: mlx_vision.VisionModel,
        request: GenerationRequest,
        cancelled: Callable[[], bool],
        started: float,
    ) -> Iterator[StreamEvent]:
        """A vision model's request: with images through its processor, else its text
        prompt as any MLX model's; either way generated by mlx-vlm (mlx_vision.py)."""
        if isinstance(request, ChatRequest) and request.images:
            prompt = vlm.image_prompt(request, self._n_ctx)
        else:
            prompt = mlx_vision.Prompt(self._prompt_tokens(request))
        params = request.params
        constraint = self._start_sampling(params)
        assert self._token_bytes is not None
        tokens = vlm.tokens(
            prompt, params, constraint, self._n_ctx, self._token_bytes, self._eos, self._logprobs
        )
        return shape_stream(
            tokens,
            params=params,
            prompt_tokens=len(prompt.ids),
            context_length=self._n_ctx,
            cancelled=cancelled,
            started=started,
            cached_tokens=lambda: 0,
        )

    def _structured_factory(self) -> Any:
        if self._structured is None:
            from daemon.engines.mlx_structured import StructuredFactory

            self._structured = StructuredFactory(self._hf, sorted(self._eos), self._n_vocab)
        return self._structured

    def _tokens(
        self,
        prompt: list[int],
        params: GenerationParams,
        constraint: Any,
        cancelled: Callable[[], bool],
    ) -> Iterator[RawToken]:
        model = self.model
        assert self._token_bytes is not None
        piece = self._token_bytes
        cache = self._prefill(prompt, reuse=params.seed is None, cancelled=cancelled)
        if cache is None:
            return
        sampler = mlx_sampling.sampler(params)
        penalties = make_logits_processors(**mlx_sampling.penalties(params))
        bias = self._bias(params.logit_bias)
        generated: list[int] = []
        last = prompt[-1]
        while True:
            self._cache = None  # a model call in progress: the cache is not trusted
            logits = model(mx.array([[last]]), cache=cache)[:, -1, :].astype(mx.float32)
            self._cache, self._cached = cache, [*prompt, *generated]
            raw = logits
            if bias is not None:
                logits = logits + bias
            if generated:
                history = mx.array(generated)
                for process in penalties:
                    logits = process(history, logits)
            if constraint is not None:
                logits = constraint.apply(logits)
            token_array = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
            token = int(np.asarray(token_array).reshape(-1)[0])
            if constraint is not None:
                constraint.accept(token)
            logprob, top = self._logprobs(raw, token, params) if params.logprobs else (None, None)
            yield RawToken(
                token_id=token,
                piece=piece(token),
                eog=token in self._eos,
                logprob=logprob,
                top_logprobs=top,
            )
            generated.append(token)
            last = token

    def _prefill(
        self, prompt: list[int], *, reuse: bool, cancelled: Callable[[], bool]
    ) -> list[Any] | None:
        """A KV cache holding every prompt token but the last (which the first step
        evaluates for logits). The part already cached by the last request is kept unless
        the request is seeded: then the prompt is evaluated afresh (bit-reproducible).
        None when cancelled."""
        model = self.model
        cache, common = self._cache, 0
        if reuse and cache is not None and can_trim_prompt_cache(cache):
            cached = self._cached
            while common < min(len(cached), len(prompt) - 1) and cached[common] == prompt[common]:
                common += 1
            trim_prompt_cache(cache, len(cached) - common)
        if common == 0:
            cache = make_prompt_cache(model)
        self._cache = None
        assert cache is not None
        self._reused = common
        todo = prompt[common:-1]
        for start in range(0, len(todo), PREFILL_CHUNK):
            if cancelled():
                return None
            model(mx.array([todo[start : start + PREFILL_CHUNK]]), cache=cache)
            mx.eval([c.state for c in cache])
        self._cache, self._cached = cache, prompt[:-1]
        return cache

    def _bias(self, logit_bias: dict[int, float]) -> mx.array | None:
        items = [(t, b) for t, b in logit_bias.items() if 0 <= t < self._n_vocab]
        if not items:
            return None
        bias = mx.zeros((self._n_vocab,), dtype=mx.float32)
        ids = mx.array([t for t, _ in items])
        return bias.at[ids].add(mx.array([b for _, b in items], dtype=mx.float32))

    def _logprobs(
        self, logits: mx.array, token: int, params: GenerationParams
    ) -> tuple[float, list[tuple[str, float]] | None]:
        """Log-probabilities from the model's raw logits (before any sampler)."""
        values = np.asarray(logits[0], dtype=np.float64)
        peak = float(values.max())
        logprobs = values - (peak + math.log(float(np.exp(values - peak).sum())))
        top = None
        if params.top_logprobs > 0:
            k = min(params.top_logprobs, logprobs.shape[0])
            best = np.argpartition(-logprobs, k - 1)[:k]
            best = best[np.argsort(-logprobs[best])]
            top = [(self._piece(int(t)), float(logprobs[t])) for t in best]
        return float(logprobs[token]), top

    def _piece(self, token: int) -> str:
        assert self._token_bytes is not None
        return self._token_bytes(token).decode("utf-8", errors="replace")

    # -- embeddings -------------------------------------------------------------------

    def embed(self, texts: list[PromptInput]) -> EmbedResult:
        raise InvalidRequest("the MLX engine does not compute embeddings; use a GGUF model")

    def close(self) -> None:
        self._model = self._tokenizer = self._hf = self._structured = self._vlm = None
        self._cache, self._cached = None, []
        mx.clear_cache()


def _vocab_size(config: dict[str, Any]) -> int | None:
    text = config.get("text_config")
    value = config.get("vocab_size")
    if value is None and isinstance(text, dict):
        value = text.get("vocab_size")
    return value if isinstance(value, int) and value > 0 else None
