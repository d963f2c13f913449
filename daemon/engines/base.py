"""The engine interface used inside a worker process, and the plain data both sides share.

Everything here is a frozen dataclass that crosses the worker's socket as JSON through
`to_dict()` / `from_dict()`. Engines (llama.cpp, MLX, the fake) implement `Engine`; the
daemon never imports an engine: it holds an `EngineHandle` (handle.py) to a worker
process, or to a thread of its own for the fake.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

from daemon.errors import InvalidRequest, ProtocolError

_T = TypeVar("_T")


def _build(cls: type[_T], data: Mapping[str, Any], **converted: Any) -> _T:
    """`cls(**data)` for the dataclass's own fields, with some values already converted."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    names = _field_names(cls)  # type: ignore[arg-type]
    kwargs = {k: v for k, v in data.items() if k in names}
    kwargs.update(converted)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from exc


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True)
class LoadSpec:
    """How to load one model instance."""

    model_path: str
    engine: str  # "llama_cpp" | "mlx" | "fake" (runtime.ENGINES)
    context_length: int | None = None  # None: the engine's default (see docs/engines.md)
    gpu_ratio: float = 0.0  # 0 = CPU only, 1 = every layer it can offload
    parallel: int = 1
    embedding: bool = False
    n_threads: int | None = None  # None: one per physical core
    mmproj_path: str | None = None
    # "shared": one KV pool of context_length cells for all slots (llama.cpp's unified
    # cache); "per_slot": every slot its own context_length cells (parallel x the memory).
    kv_pool: str = "shared"
    flash_attention: str = "on"  # "on" | "off" | "auto" (llama.cpp decides)
    kv_cache_type_k: str = "f16"  # "f16" | "q8_0" | "q4_0"
    kv_cache_type_v: str = "f16"  # quantized V needs flash attention
    use_mmap: bool = True  # map the weights from the file (else read them into memory)
    use_mlock: bool = False  # keep the weights in RAM (never swapped out)
    seed: int | None = None  # seeds the requests that bring no seed of their own
    offload_kqv: bool = True  # the KV cache (and attention) on the GPU with the layers
    verbose: bool = False  # let the engine's own logging through (to the daemon's debug log)
    in_process: bool = False  # run on a thread of the daemon (inprocess.py), not a worker
    # The worker process's memory ceiling (RLIMIT_DATA: its private memory; mmap'ed
    # weights do not count); None: no ceiling. Not applied to an in-process engine.
    memory_limit_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadSpec:
        return _build(cls, data)


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded instance really is (measured after loading, never guessed)."""

    runtime_name: str  # e.g. "llama.cpp-linux-x86_64-cpu"
    runtime_version: str
    supported_formats: list[str]
    context_length: int  # the loaded context, not the trained one
    arch: str
    quant: str | None
    n_gpu_layers: int
    embedding: bool
    chat_template: bool  # the model ships its own chat template
    # Load settings given that this engine does not apply (engines/settings.py).
    ignored_settings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineInfo:
        return _build(cls, data)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None = None  # None: until EOS or the context is full
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # same seed + same input -> same output
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF text
    # Structured output as data, turned into the engine's own constraint in the worker:
    # {"schema": JSON schema, "prefix": str, "suffix": str, "repeat": bool} generates
    # prefix + a JSON value matching schema + suffix (one or more times with repeat).
    structured: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationParams:
        bias = data.get("logit_bias") or {}
        stop = data.get("stop") or []
        return _build(
            cls,
            data,
            logit_bias={int(k): float(v) for k, v in bias.items()},
            stop=[str(s) for s in stop],
        )


# Where an image goes in a chat message's text (llama.cpp mtmd's default media marker).
IMAGE_MARKER = "<__media__>"

# An input as text, or as token ids of the model's vocabulary (OpenAI allows both).
PromptInput = str | list[int]


@dataclass(frozen=True)
class CompletionRequest:
    prompt: PromptInput  # text (tokenized by the engine) or token ids (used as they are)
    params: GenerationParams = field(default_factory=GenerationParams)

    def to_dict(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else list(self.prompt)
        return {"kind": "completion", "prompt": prompt, "params": self.params.to_dict()}


@dataclass(frozen=True)
class ChatRequest:
    """The worker renders the prompt with the model's own chat template. `messages` are
    as chat templates read them: `role`, `content` (one string), and where present
    `tool_calls` (OpenAI's shape), `tool_call_id`, `name` (prediction/service.py makes
    them). An image stands in a message's content as IMAGE_MARKER; `images` holds each
    image's file bytes, base64-encoded, in the order their markers come in the prompt."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    add_generation_prompt: bool = True
    images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "chat",
            "messages": self.messages,
            "tools": self.tools,
            "params": self.params.to_dict(),
            "add_generation_prompt": self.add_generation_prompt,
            "images": self.images,
        }


GenerationRequest = CompletionRequest | ChatRequest


def request_from_dict(data: Mapping[str, Any]) -> GenerationRequest:
    params = GenerationParams.from_dict(data.get("params") or {})
    kind = data.get("kind")
    if kind == "completion":
        return _build(
            CompletionRequest, data, params=params, prompt=prompt_input(data.get("prompt"))
        )
    if kind == "chat":
        images = data.get("images") or []
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ProtocolError("a chat's images must be a list of base64 strings")
        return _build(ChatRequest, data, params=params, images=images)
    raise ProtocolError(f"unknown request kind {kind!r}")


def prompt_input(value: Any) -> PromptInput:
    """A prompt or embedding input off the wire: text, or a list of integer token ids."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(type(t) is int for t in value):
        return list(value)
    raise ProtocolError(f"an input must be text or token ids, got {type(value).__name__}")


def check_token_ids(tokens: list[int], n_vocab: int, *, param: str) -> None:
    """Token-id input, refused before anything runs unless every id is in the vocabulary."""
    if not tokens:
        raise InvalidRequest(f"'{param}' is empty", param=param, code="invalid_value")
    for token in tokens:
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"'{param}' holds token id {token}, which is not in the model's vocabulary "
                f"(0..{n_vocab - 1})",
                param=param,
                code="invalid_value",
            )


class StopReason(StrEnum):
    """Why a generation ended; the values are LM Studio's."""

    EOS = "eosFound"
    STOP_STRING = "stopStringFound"
    MAX_TOKENS = "maxPredictedTokensReached"
    CONTEXT_FULL = "contextLengthReached"
    USER_STOPPED = "userStopped"


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token. `text` is what to emit now: it can be empty (held back because
    it may begin a stop string, or an incomplete UTF-8 character) or hold earlier tokens'
    text too. `piece` is the token's own text, for logprobs, and `piece_bytes` its exact
    bytes (a token can hold part of a UTF-8 character, which `piece` cannot show). A last
    event with `token_id=None` releases held-back text when the stream ends without a stop
    string."""

    text: str
    token_id: int | None
    logprob: float | None = None
    top_logprobs: list[tuple[str, float]] | None = None
    piece: str = ""
    piece_bytes: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        # Written out (not asdict, which deep-copies): one per token, ~30x cheaper.
        top = self.top_logprobs
        return {
            "text": self.text,
            "token_id": self.token_id,
            "logprob": self.logprob,
            "top_logprobs": None if top is None else list(top),
            "piece": self.piece,
            "piece_bytes": None if self.piece_bytes is None else list(self.piece_bytes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenEvent:
        top = data.get("top_logprobs")
        pairs = None if top is None else [(str(t), float(p)) for t, p in top]
        return _build(cls, data, top_logprobs=pairs)


@dataclass(frozen=True)
class DoneEvent:
    """The last event of every generation."""

    stop_reason: StopReason
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float  # seconds from the request to the first sampled token
    generation_time: float  # seconds from the first sampled token to the last
    tokens_per_second: float  # sampling rate after the first token (0 if too few to tell)
    stop_string: str | None = None
    cached_tokens: int = 0  # prompt tokens reused from the prompt cache (not read again)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DoneEvent:
        try:
            reason = StopReason(str(data.get("stop_reason")))
        except ValueError as exc:
            raise ProtocolError(f"unknown stop reason {data.get('stop_reason')!r}") from exc
        return _build(cls, data, stop_reason=reason)


StreamEvent = TokenEvent | DoneEvent


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[list[float]]  # one unit-length vector per input
    prompt_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedResult:
        return _build(cls, data)


# How far a load has got (0..1). Returning False asks the engine to stop loading (it then
# raises LoadFailed): the contract of llama.cpp's own `progress_callback`.
LoadProgressCallback = Callable[[float], bool]


def keep_loading(progress: float) -> bool:
    """The progress callback of a load nobody follows."""
    return True


class Engine(Protocol):
    """What a worker needs from an engine. Calls come from one thread, one at a time;
    `generate` is stepped token by token, so other calls may run between its steps."""

    def load(self, spec: LoadSpec, progress: LoadProgressCallback = keep_loading) -> EngineInfo:
        """Load the model or raise LoadFailed saying why. Reports how far it has got
        through `progress` (0..1) where it can, and stops (LoadFailed) when that
        returns False."""
        ...

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[StreamEvent]:
        """TokenEvents then one DoneEvent. Raises ContextOverflow before generating when
        the prompt does not fit; checks `cancelled()` between tokens (-> "userStopped")."""
        ...

    def embed(self, texts: list[PromptInput]) -> EmbedResult:
        """One vector per input: a text, or token ids (InvalidRequest when one is not in
        the vocabulary, before anything runs)."""
        ...

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text the model's chat template makes of these messages."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def tokenize(self, text: str) -> list[int]:
        """The token ids the engine makes of `text` when it is a prompt."""
        ...

    def close(self) -> None: ...


SlotOutput = tuple[int, StreamEvent | Exception]


@runtime_checkable
class BatchingEngine(Protocol):
    """Optional capability: an engine with parallel slots that are stepped together (one
    batched decode advances every running generation by a token). The worker drives it:
    `admit` a request into a free slot, then `step` while anything is active. An engine
    without it is run one generation at a time through `Engine.generate`."""

    def slot_count(self) -> int: ...

    def free_slots(self) -> int: ...

    def active(self) -> int:
        """Generations running (admitted, not yet finished)."""
        ...

    def admit(
        self,
        key: int,
        request: GenerationRequest,
        cancelled: Callable[[], bool],
        arrived: float,
    ) -> None:
        """Starts `request` in a free slot under `key`. Raises (ContextOverflow,
        InvalidRequest, ...) before anything runs when it cannot start. `arrived` is the
        time.perf_counter() reading when the request reached the worker: time to first
        token counts from it, so waiting for a slot shows."""
        ...

    def step(self) -> list[SlotOutput]:
        """One step for every active generation: the events it produced, by key, in
        order. A generation's last item is its DoneEvent, or an Exception when it failed;
        its slot is free after that. `cancelled()` is checked at each step."""
        ...

    def abort_all(self) -> None:
        """Drops every active generation without events (the worker is shutting down)."""
        ...
