"""The llama.cpp engine (llama-cpp-python), run inside a worker process.

Generation is our own token loop over llama.cpp's sampler chain (not create_completion),
so every GenerationParams field maps onto one native sampler, each token can carry its
logprobs, and stop strings, limits and timing are shared with every engine
(streaming.py). The context defaults to min(the model's trained context, 4096): LM
Studio's default, and a bound on KV-cache memory for models trained on 128k.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
import llama_cpp
import numpy as np
import psutil
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from daemon.engines.base import (
    ChatRequest,
    EmbedResult,
    EngineInfo,
    GenerationParams,
    GenerationRequest,
    LoadSpec,
    StreamEvent,
)
from daemon.engines.streaming import RawToken, shape_stream
from daemon.errors import ContextOverflow, EngineError, InvalidRequest, LoadFailed

DEFAULT_CONTEXT = 4096
# Used when a model ships no chat template (EngineInfo.chat_template is then False).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"
QUANT_NAMES = {
    int(getattr(llama_cpp, name)): name.removeprefix(FTYPE_PREFIX)
    for name in dir(llama_cpp)
    if name.startswith(FTYPE_PREFIX)
} | {int(llama_cpp.LLAMA_FTYPE_ALL_F32): "F32"}


def runtime_name() -> str:
    """e.g. "llama.cpp-linux-x86_64-cpu": the backend this build really has."""
    backend = "cpu"
    if llama_cpp.llama_supports_gpu_offload():
        system = llama_cpp.llama_print_system_info().decode(errors="replace").lower()
        found = [b for b in ("cuda", "metal", "vulkan", "hip", "sycl") if f"{b} :" in system]
        backend = found[0] if found else "gpu"
    return f"llama.cpp-{sys.platform}-{platform.machine().lower()}-{backend}"


def gpu_layers(ratio: float, block_count: int, can_offload: bool) -> int:
    """Layers to offload for a 0..1 ratio: 0 without GPU support, -1 (all) at 1."""
    if not can_offload or ratio <= 0:
        return 0
    if ratio >= 1:
        return -1
    return round(ratio * block_count)


def default_threads() -> int:
    """One thread per physical core we may run on (llama.cpp's advice)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    physical = psutil.cpu_count(logical=False) or usable or 1
    return max(1, min(physical, usable or 1))


def read_metadata(path: str) -> dict[str, str]:
    """GGUF key/values without loading the weights (a vocabulary-only load)."""
    probe = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    try:
        return dict(probe.metadata)
    finally:
        probe.close()


class LlamaCppEngine:
    def __init__(self) -> None:
        self._llm: llama_cpp.Llama | None = None
        self._formatters: dict[bool, Jinja2ChatFormatter] = {}
        self._template = CHATML
        self._bos_text = ""
        self._eos_text = ""
        self._n_vocab = 0

    @property
    def llm(self) -> llama_cpp.Llama:
        if self._llm is None:
            raise EngineError("no model is loaded")
        return self._llm

    # -- load ---------------------------------------------------------------------

    def load(self, spec: LoadSpec) -> EngineInfo:
        path = spec.model_path
        if not os.path.isfile(path):
            raise LoadFailed(f"model file not found: {path}")
        try:
            meta = read_metadata(path)
        except (ValueError, RuntimeError) as exc:
            raise LoadFailed(f"{path} is not a model llama.cpp can load ({exc})") from exc
        arch = meta.get("general.architecture", "unknown")
        trained = int(meta.get(f"{arch}.context_length", "0") or 0)
        n_ctx = spec.context_length or (min(trained, DEFAULT_CONTEXT) or DEFAULT_CONTEXT)
        blocks = int(meta.get(f"{arch}.block_count", "0") or 0)
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        n_gpu = gpu_layers(spec.gpu_ratio, blocks, offload)
        kwargs: dict[str, Any] = {}
        if spec.embedding:  # a whole text must fit one batch to be pooled
            kwargs.update(n_batch=n_ctx, n_ubatch=n_ctx)
        try:
            self._llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_gpu_layers=n_gpu,
                n_threads=spec.n_threads or default_threads(),
                embedding=spec.embedding,
                verbose=spec.verbose,
                **kwargs,
            )
        except MemoryError as exc:
            raise LoadFailed(f"out of memory loading {path} with a {n_ctx}-token context") from exc
        except (ValueError, RuntimeError) as exc:
            raise LoadFailed(f"llama.cpp could not load {path}: {exc}") from exc
        llm = self._llm
        self._n_vocab = llm.n_vocab()
        self._bos_text = self._special_text(llm.token_bos())
        self._eos_text = self._special_text(llm.token_eos())
        template = meta.get("tokenizer.chat_template")
        self._template = template or CHATML
        file_type = meta.get("general.file_type")
        quant = None if file_type is None else QUANT_NAMES.get(int(file_type) & ~1024)
        return EngineInfo(
            runtime_name=runtime_name(),
            runtime_version=llama_cpp.__version__,
            supported_formats=["gguf"],
            context_length=llm.n_ctx(),
            arch=arch,
            quant=quant,
            n_gpu_layers=(blocks if n_gpu < 0 else n_gpu),
            embedding=spec.embedding,
            chat_template=template is not None,
        )

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # -- text -----------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        formatter = self._formatters.get(add_generation_prompt)
        if formatter is None:
            formatter = Jinja2ChatFormatter(
                self._template, self._eos_text, self._bos_text, add_generation_prompt
            )
            self._formatters[add_generation_prompt] = formatter
        flat = [{**m, "content": _text_content(m.get("content"))} for m in messages]
        try:
            return str(formatter(messages=flat, tools=tools).prompt)  # type: ignore[arg-type]
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}") from exc

    def tokenize(self, text: str) -> list[int]:
        """How a prompt is tokenized: special tokens parsed, BOS added unless the text
        (a rendered chat template, say) already starts with it."""
        add_bos = not (self._bos_text and text.startswith(self._bos_text))
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # -- generation -----------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        if isinstance(request, ChatRequest):
            prompt = self.render_chat(
                request.messages, request.tools, request.add_generation_prompt
            )
        else:
            prompt = request.prompt
        tokens = self.tokenize(prompt)
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        n_ctx = self.llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise ContextOverflow(len(tokens), n_ctx)
        sampler = Sampler(self.llm, request.params)
        return shape_stream(
            self._tokens(tokens, sampler, request.params, cancelled),
            params=request.params,
            prompt_tokens=len(tokens),
            context_length=n_ctx,
            cancelled=cancelled,
            started=started,
        )

    def _tokens(
        self,
        prompt: list[int],
        sampler: Sampler,
        params: GenerationParams,
        cancelled: Callable[[], bool],
    ) -> Iterator[RawToken]:
        llm = self.llm
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        try:
            if not self._prefill(prompt, reuse=params.seed is None, cancelled=cancelled):
                return
            while True:
                token = sampler.sample()
                logprob, top = self._logprobs(token, params) if params.logprobs else (None, None)
                yield RawToken(
                    token_id=token,
                    piece=llm.detokenize([token]),
                    eog=bool(llama_cpp.llama_vocab_is_eog(vocab, token)),
                    logprob=logprob,
                    top_logprobs=top,
                )
                llm.eval([token])
        finally:
            sampler.close()

    def _prefill(self, prompt: list[int], *, reuse: bool, cancelled: Callable[[], bool]) -> bool:
        """Evaluates the prompt, batch by batch so a cancel is seen between batches. The
        part already in the KV cache from the last request is kept, unless the request is
        seeded: then the prompt is evaluated afresh so the output is bit-reproducible."""
        llm = self.llm
        common = 0
        if reuse:
            cached = llm.input_ids[: llm.n_tokens].tolist()
            while common < min(len(cached), len(prompt)) and cached[common] == prompt[common]:
                common += 1
            common = min(common, len(prompt) - 1)  # the last token is evaluated for logits
        memory = llama_cpp.llama_get_memory(llm.ctx)
        if (
            common > 0
            and memory is not None
            and llama_cpp.llama_memory_seq_rm(memory, -1, common, -1)
        ):
            llm.n_tokens = common
        else:
            llm.reset()  # type: ignore[no-untyped-call]
            common = 0
        for start in range(common, len(prompt), llm.n_batch):
            if cancelled():
                return False
            llm.eval(prompt[start : start + llm.n_batch])
        return True

    def _logprobs(
        self, token: int, params: GenerationParams
    ) -> tuple[float, list[tuple[str, float]] | None]:
        """Log-probabilities from the model's raw logits (before any sampler)."""
        raw = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(raw, shape=(self._n_vocab,)).astype(np.float64)
        peak = float(logits.max())
        logprobs = logits - (peak + math.log(float(np.exp(logits - peak).sum())))
        top = None
        if params.top_logprobs > 0:
            k = min(params.top_logprobs, self._n_vocab)
            best = np.argpartition(-logprobs, k - 1)[:k]
            best = best[np.argsort(-logprobs[best])]
            top = [(self._piece(int(t)), float(logprobs[t])) for t in best]
        return float(logprobs[token]), top

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")

    # -- embeddings -------------------------------------------------------------------

    def embed(self, texts: list[str]) -> EmbedResult:
        llm = self.llm
        if not llm.context_params.embeddings:
            raise InvalidRequest("this model instance was not loaded for embeddings")
        for text in texts:
            count = len(llm.tokenize(text.encode("utf-8")))
            if count > llm.n_batch:
                raise ContextOverflow(count, llm.n_batch)
        output, total = llm.embed(texts, normalize=False, truncate=False, return_count=True)
        vectors = [_unit(_pool(v)) for v in output]
        return EmbedResult(vectors=vectors, prompt_tokens=int(total))

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def structured_grammar(structured: dict[str, Any]) -> str:
    """GBNF for prefix + a JSON value matching the schema + suffix (repeated when asked),
    through llama.cpp's own JSON-schema converter."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(structured["schema"]))
    except Exception as exc:  # the converter raises plain Exceptions on unsupported schemas
        raise InvalidRequest(
            f"the JSON schema cannot be turned into a grammar: {exc}", param="response_format"
        ) from exc
    rules = re.sub(r"^root ::=", "structured-value ::=", gbnf, flags=re.MULTILINE)
    # json.dumps makes a GBNF string literal: the escapes are the same.
    prefix, suffix = structured.get("prefix") or "", structured.get("suffix") or ""
    item = " ".join(
        [json.dumps(prefix)] * bool(prefix)
        + ["structured-value"]
        + [json.dumps(suffix)] * bool(suffix)
    )
    root = f"root ::= ({item} [ \\t\\n]*)+" if structured.get("repeat") else f"root ::= {item}"
    return f"{root}\n{rules}"


class Sampler:
    """One request's llama.cpp sampler chain, in llama.cpp's usual order: logit bias,
    penalties, grammar, then greedy (temperature 0) or top-k, top-p, min-p, temperature
    and a seeded draw."""

    def __init__(self, llm: llama_cpp.Llama, params: GenerationParams) -> None:
        self._llm = llm
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n_vocab = llm.n_vocab()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain: Any = chain
        try:
            if params.logit_bias:
                items = [(t, b) for t, b in params.logit_bias.items() if 0 <= t < n_vocab]
                biases = (llama_cpp.llama_logit_bias * len(items))(
                    *(llama_cpp.llama_logit_bias(token, bias) for token, bias in items)
                )
                self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(items), biases))
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    llm.last_n_tokens_size,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
            gbnf = params.grammar
            if params.structured is not None:
                gbnf = structured_grammar(params.structured)
            if gbnf is not None:
                grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
                if not grammar:
                    raise InvalidRequest("the grammar is not valid GBNF", param="grammar")
                self._add(grammar)
            if params.temperature <= 0:
                self._add(llama_cpp.llama_sampler_init_greedy())
            else:
                seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
                self._add(llama_cpp.llama_sampler_init_top_k(params.top_k))
                self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
                self._add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
                self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
                self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self) -> int:
        """Samples (and accepts) the next token from the last evaluated position."""
        return int(llama_cpp.llama_sampler_sample(self._chain, self._llm.ctx, -1))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:  # a stream closed before its first token never ran _tokens
        self.close()


def _text_content(content: Any) -> Any:
    """OpenAI content parts -> the plain text most chat templates expect."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content


def _pool(vector: Any) -> list[float]:
    """A per-token embedding (pooling "none") becomes its mean; a pooled one stays."""
    array = np.asarray(vector, dtype=np.float64)
    return [float(x) for x in (array.mean(axis=0) if array.ndim == 2 else array)]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
