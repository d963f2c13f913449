"""The llama.cpp engine (llama-cpp-python), run inside a worker process.

A generation instance is one llama.cpp context with `LoadSpec.parallel` sequences (slots,
llama_slots.py): every running request advances by one token per batched decode, each
with its own native sampler chain (llama_sampling.py), and stop strings, limits and
timing are shared with every engine (streaming.py). The slots share one KV pool of
context_length cells (kv_pool "shared", llama.cpp's unified cache), or each gets its own
context_length cells (kv_pool "per_slot", one KV stream per slot).
The context length defaults to min(the model's trained context, 4096): LM Studio's
default, and a bound on KV-cache memory for models trained on 128k.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from daemon.engines.base import (
    IMAGE_MARKER,
    ChatRequest,
    DoneEvent,
    EmbedResult,
    EngineInfo,
    GenerationParams,
    GenerationRequest,
    LoadProgressCallback,
    LoadSpec,
    PromptInput,
    StreamEvent,
    check_token_ids,
    keep_loading,
)
from daemon.engines.chat_template import ChatTemplate
from daemon.engines.llama_lib import VERSION, llama_cpp, set_verbose
from daemon.engines.llama_sampling import Sampler, structured_grammar
from daemon.engines.llama_slots import LlamaSlots
from daemon.engines.slots import DelegatedSlots, SlotRunner
from daemon.engines.streaming import check_prompt_size, prompt_tokens
from daemon.errors import ContextOverflow, EngineError, InvalidRequest, LoadFailed

__all__ = ["LlamaCppEngine", "Sampler", "structured_grammar"]

DEFAULT_CONTEXT = 4096
N_BATCH = 512  # tokens per llama_decode (prompt chunks and the slots' tokens together)
# Flash attention ("on" by default): about 15% more tokens per second on CPU, single and
# batched (measured on SmolLM2-135M, 2 cores).
FLASH_ATTN = {
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
}
KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}
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
    """GGUF key/values as llama.cpp reads them, without the weights (a vocabulary-only
    load)."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise ValueError("llama.cpp could not read its header")
    try:
        return {
            _meta_string(llama_cpp.llama_model_meta_key_by_index, model, i): _meta_string(
                llama_cpp.llama_model_meta_val_str_by_index, model, i
            )
            for i in range(int(llama_cpp.llama_model_meta_count(model)))
        }
    finally:
        llama_cpp.llama_model_free(model)


def _meta_string(read: Callable[..., int], model: Any, index: int) -> str:
    """One metadata key or value (llama.cpp returns the full length when it is cut)."""
    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        needed = int(read(model, index, buffer, size))
        if needed < size:
            return buffer.value.decode("utf-8", errors="replace")
        size = needed + 1


def load_mode(spec: LoadSpec) -> int:
    """llama.cpp's load mode for the spec's mmap and mlock settings."""
    if spec.use_mmap:
        mode = (
            llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK
            if spec.use_mlock
            else llama_cpp.LLAMA_LOAD_MODE_MMAP
        )
    else:
        mode = llama_cpp.LLAMA_LOAD_MODE_MLOCK if spec.use_mlock else llama_cpp.LLAMA_LOAD_MODE_NONE
    return int(mode)


def context_params(spec: LoadSpec, n_ctx: int, n_seq: int, n_threads: int) -> Any:
    """The context parameters of a generation instance: one KV pool of n_ctx cells shared
    by the slots, or n_ctx cells per slot, with the spec's attention and cache types."""
    shared = spec.kv_pool == "shared"
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx if shared else n_ctx * n_seq
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = n_threads
    params.kv_unified = shared
    params.no_perf = True
    params.flash_attn_type = FLASH_ATTN[spec.flash_attention]
    params.type_k = KV_TYPES[spec.kv_cache_type_k]
    params.type_v = KV_TYPES[spec.kv_cache_type_v]
    params.offload_kqv = spec.offload_kqv
    return params


class _Context:
    """A model and a context we own (generation instances), freed in reverse order."""

    def __init__(
        self,
        path: str,
        n_gpu: int,
        n_ctx: int,
        n_seq: int,
        n_threads: int,
        progress: LoadProgressCallback = keep_loading,
        *,
        spec: LoadSpec,
    ) -> None:
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu
        model_params.load_mode = load_mode(spec)
        stopped = False

        def on_progress(value: float, _user_data: Any) -> bool:
            nonlocal stopped
            stopped = not progress(value)
            return not stopped

        # Held in a local for as long as the load runs: ctypes must not free it before.
        callback = llama_cpp.llama_progress_callback(on_progress)
        model_params.progress_callback = callback
        self.model: Any = llama_cpp.llama_model_load_from_file(path.encode(), model_params)
        if not self.model:
            raise LoadFailed(
                "loading was cancelled" if stopped else f"llama.cpp could not load {path}"
            )
        params = context_params(spec, n_ctx, n_seq, n_threads)
        self.model_params, self.params = model_params, params  # read back by tests
        self.ctx: Any = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise MemoryError
        self.n_ctx = n_ctx

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class LlamaCppEngine(DelegatedSlots):
    def __init__(self) -> None:
        self._llm: Any = None  # embedding instances: llama-cpp-python's Llama
        self._own: _Context | None = None  # generation instances: ours, with N sequences
        self._slots: LlamaSlots | None = None
        self._vision: Any = None  # a vision model's projector (llama_vision.Vision)
        self._vocab: Any = None
        self._bos = -1
        self._n_ctx = 0
        self._n_vocab = 0
        self._seeds: random.Random | None = None  # LoadSpec.seed: seeds unseeded requests
        self._max_token_bytes: int | None = None
        self._template: ChatTemplate | None = None
        self._bos_text = ""
        self._eos_text = ""

    @property
    def slots(self) -> LlamaSlots:
        if self._slots is None:
            raise EngineError("no model is loaded")
        return self._slots

    # -- load ---------------------------------------------------------------------

    def load(self, spec: LoadSpec, progress: LoadProgressCallback = keep_loading) -> EngineInfo:
        path = spec.model_path
        if not os.path.isfile(path):
            raise LoadFailed(f"model file not found: {path}")
        set_verbose(spec.verbose)
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
        n_threads = spec.n_threads or default_threads()
        n_seq = 1 if spec.embedding else max(1, spec.parallel)
        try:
            if spec.embedding:  # a whole text must fit one batch to be pooled
                from llama_cpp.llama import Llama  # the high-level class: numpy and all

                llm = Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_ubatch=n_ctx,
                    n_gpu_layers=n_gpu,
                    n_threads=n_threads,
                    use_mmap=spec.use_mmap,
                    use_mlock=spec.use_mlock,
                    embedding=True,
                    verbose=spec.verbose,
                )
                self._llm = llm
                model, ctx, self._n_ctx = llm.model, llm.ctx, llm.n_ctx()
            else:
                self._own = _Context(path, n_gpu, n_ctx, n_seq, n_threads, progress, spec=spec)
                model, ctx, self._n_ctx = self._own.model, self._own.ctx, n_ctx
        except MemoryError as exc:
            raise LoadFailed(f"out of memory loading {path} with a {n_ctx}-token context") from exc
        except (ValueError, RuntimeError) as exc:
            raise LoadFailed(f"llama.cpp could not load {path}: {exc}") from exc
        if spec.mmproj_path and not spec.embedding:
            if not os.path.isfile(spec.mmproj_path):
                self.close()
                raise LoadFailed(f"vision projector not found: {spec.mmproj_path}")
            from daemon.engines.llama_vision import Vision  # numpy, Pillow: vision only

            try:
                self._vision = Vision(
                    spec.mmproj_path,
                    model,
                    n_threads=n_threads,
                    use_gpu=n_gpu != 0,
                    verbose=spec.verbose,
                )
            except LoadFailed:
                self.close()
                raise
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._max_token_bytes = None if spec.embedding else self._longest_token()
        self._seeds = None if spec.seed is None else random.Random(spec.seed)
        shared = not spec.embedding and spec.kv_pool == "shared"
        self._slots = LlamaSlots(
            ctx,
            self._vocab,
            n_slots=n_seq,
            context_length=self._n_ctx,
            pool_cells=int(llama_cpp.llama_n_ctx(ctx)) if shared else None,
            n_batch=N_BATCH if not spec.embedding else min(N_BATCH, self._n_ctx),
            piece=self.piece,
            vision=self._vision,
        )
        self._bos_text = self._special_text(self._bos)
        self._eos_text = self._special_text(int(llama_cpp.llama_vocab_eos(self._vocab)))
        template = meta.get("tokenizer.chat_template")
        self._template = ChatTemplate(template or CHATML, self._bos_text, self._eos_text)
        file_type = meta.get("general.file_type")
        quant = None if file_type is None else QUANT_NAMES.get(int(file_type) & ~1024)
        return EngineInfo(
            runtime_name=runtime_name(),
            runtime_version=VERSION,
            supported_formats=["gguf"],
            context_length=self._n_ctx,
            arch=arch,
            quant=quant,
            n_gpu_layers=(blocks if n_gpu < 0 else n_gpu),
            embedding=spec.embedding,
            chat_template=template is not None,
        )

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    # -- text -----------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        if self._template is None:
            raise EngineError("no model is loaded")
        try:
            return self._template.render(messages, tools, add_generation_prompt)
        except ValueError as exc:
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}") from exc

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """How a prompt is tokenized: special tokens parsed, BOS added unless the text
        (a rendered chat template, say) already starts with it."""
        if self._vocab is None:
            raise EngineError("no model is loaded")
        add_bos = not (self._bos_text and text.startswith(self._bos_text))
        data = text.encode("utf-8")
        size = len(data) + 2
        while True:
            buffer = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, size, add_bos, special
            )
            if n >= 0:
                return list(buffer[:n])
            size = -n

    def piece(self, token: int, special: bool = False) -> bytes:
        """One token's bytes (special tokens render as nothing unless `special`)."""
        size = 32
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, special)
            if n >= 0:
                text = buffer.raw[:n]
                return text[1:] if token == self._bos and text.startswith(b" ") else text
            size = -n

    def _longest_token(self) -> int | None:
        """The most bytes of text one token can stand for (streaming.check_prompt_size),
        for the lossless tokenizers (BPE, SentencePiece): its longest piece, special
        tokens' text included, and never less than a character (an unknown one is one
        token). None for tokenizers that normalize text (WordPiece drops whitespace)."""
        kind = int(llama_cpp.llama_vocab_type(self._vocab))
        if kind not in (llama_cpp.LLAMA_VOCAB_TYPE_BPE, llama_cpp.LLAMA_VOCAB_TYPE_SPM):
            return None
        longest = max((len(self.piece(t, special=True)) for t in range(self._n_vocab)), default=0)
        return max(longest, 4)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # -- generation: slots (base.BatchingEngine) ---------------------------------------

    def admit(
        self,
        key: int,
        request: GenerationRequest,
        cancelled: Callable[[], bool],
        arrived: float,
    ) -> None:
        params = request.params
        if params.seed is None and self._seeds is not None:  # reproducible from the load seed
            params = dataclasses.replace(params, seed=self._seeds.randrange(2**31))
        if isinstance(request, ChatRequest) and request.images:
            self._admit_with_images(key, request, params, cancelled, arrived)
            return
        tokens = prompt_tokens(
            request,
            self.render_chat,
            self.tokenize,
            self._n_ctx,
            self._n_vocab,
            self._max_token_bytes,
        )
        self.slots.admit(key, tokens, params, cancelled, arrived)

    def _admit_with_images(
        self,
        key: int,
        request: ChatRequest,
        params: GenerationParams,
        cancelled: Callable[[], bool],
        arrived: float,
    ) -> None:
        vision = self._vision
        if vision is None:
            raise InvalidRequest(
                "this model cannot see images (it was loaded without a vision projector)",
                param="messages",
                code="model_not_vision",
            )
        text = self.render_chat(request.messages, request.tools, request.add_generation_prompt)
        check_prompt_size(text, self._n_ctx, self._max_token_bytes)
        text = text.replace(IMAGE_MARKER, vision.marker)
        add_special = not (self._bos_text and text.startswith(self._bos_text))
        prompt = vision.prompt(text, request.images, add_special=add_special)
        try:
            if len(prompt.tokens) >= self._n_ctx:
                raise ContextOverflow(len(prompt.tokens), self._n_ctx)
            self.slots.admit(key, prompt.tokens, params, cancelled, arrived, spans=prompt.spans)
        except BaseException:
            for span in prompt.spans:
                span.free()
            raise

    def context_settings(self) -> dict[str, Any]:
        """What llama.cpp was given and reports back (for tests and diagnostics)."""
        own = self._own
        if own is None:
            return {}
        return {
            "n_ctx": int(llama_cpp.llama_n_ctx(own.ctx)),
            "n_seq_max": int(llama_cpp.llama_n_seq_max(own.ctx)),
            "n_threads": int(llama_cpp.llama_n_threads(own.ctx)),
            "n_threads_batch": int(llama_cpp.llama_n_threads_batch(own.ctx)),
            "kv_unified": bool(own.params.kv_unified),
            "flash_attn_type": int(own.params.flash_attn_type),
            "type_k": int(own.params.type_k),
            "type_v": int(own.params.type_v),
            "offload_kqv": bool(own.params.offload_kqv),
            "load_mode": int(own.model_params.load_mode),
        }

    def _slot_runner(self) -> SlotRunner:
        return self.slots

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[StreamEvent]:
        """One generation on its own (the worker steps the slots itself)."""
        key = -1  # never a worker's request id
        self.admit(key, request, cancelled, time.perf_counter())
        return self._drain(key)

    def _drain(self, key: int) -> Iterator[StreamEvent]:
        try:
            while True:
                for owner, item in self.step():
                    if owner != key:
                        continue
                    if isinstance(item, Exception):
                        raise item
                    yield item
                    if isinstance(item, DoneEvent):
                        return
        finally:
            if self._slots is not None:
                self._slots.drop(key)

    # -- embeddings -------------------------------------------------------------------

    def embed(self, texts: list[PromptInput]) -> EmbedResult:
        llm = self._llm
        if llm is None:
            raise InvalidRequest("this model instance was not loaded for embeddings")
        # llama-cpp-python's embed() tokenizes every input itself: token-id inputs go in
        # as placeholder texts that its tokenize() (wrapped for this call) maps back.
        given: dict[bytes, list[int]] = {}
        inputs: list[str] = []
        for i, item in enumerate(texts):
            if isinstance(item, str):
                count = len(llm.tokenize(item.encode("utf-8")))
                inputs.append(item)
            else:
                check_token_ids(item, self._n_vocab, param="input")
                count = len(item)
                placeholder = f"\x00lmsd-token-input-{i}\x00"
                given[placeholder.encode("utf-8")] = list(item)
                inputs.append(placeholder)
            if count > llm.n_batch:
                raise ContextOverflow(count, llm.n_batch)
        tokenize = llm.tokenize
        if given:
            llm.tokenize = lambda text, *args, **kwargs: (
                given[text] if text in given else tokenize(text, *args, **kwargs)
            )
        try:
            output, total = llm.embed(inputs, normalize=False, truncate=False, return_count=True)
        finally:
            if given:
                del llm.tokenize  # the class's method again
            self.slots.forget()  # llama-cpp-python cleared the context's memory
        vectors = [_unit(_pool(v)) for v in output]
        return EmbedResult(vectors=vectors, prompt_tokens=int(total))

    def close(self) -> None:
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        if self._vision is not None:
            self._vision.close()
            self._vision = None
        if self._own is not None:
            self._own.close()
            self._own = None
        self._vocab = None


def _pool(vector: Any) -> list[float]:
    """A per-token embedding (pooling "none") becomes its mean; a pooled one stays."""
    import numpy as np  # embedding instances have it loaded already (llama_cpp.llama)

    array = np.asarray(vector, dtype=np.float64)
    return [float(x) for x in (array.mean(axis=0) if array.ndim == 2 else array)]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
