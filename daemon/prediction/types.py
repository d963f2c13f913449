"""The one internal request every API surface is translated into, and the one stream of
typed events the prediction service answers with. Plain frozen data: no I/O, no wire shapes.

    surface request ──translator──► Prediction ──service──► PredictionEvent* ──translator──► wire

A prediction fails in one of two ways, and only these: before its first event (the
service raises a typed LmsError: the surface answers with an HTTP error status), or with
one final `PredictionFailed` event once events have gone out (the surface writes its own
in-stream error). Every other prediction ends with exactly one `PredictionDone`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.engines.base import DoneEvent, GenerationParams, StopReason, TokenEvent
from daemon.errors import LmsError
from daemon.instance import LoadRequest

Role = Literal["system", "user", "assistant", "tool"]
ToolMode = Literal["none", "auto", "required"]


# -- input ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image, already decoded from its transport (data URL, base64 block, upload)."""

    data: bytes
    mime_type: str


@dataclass(frozen=True)
class ImageUrl:
    """An image named by an http(s) URL: the prediction service fetches it (when the
    `image_urls` setting allows) into an ImagePart before a model is leased."""

    url: str
    param: str  # where the request named it, for errors


ContentPart = TextPart | ImagePart | ImageUrl


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (or made earlier in the conversation)."""

    id: str
    name: str
    arguments: str  # JSON text

    def arguments_object(self) -> Any:
        """The arguments as JSON data (the text itself when it is not JSON)."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass(frozen=True)
class ToolSetup:
    """The tools a prediction may call, in the shape chat templates consume:
    `{"type": "function", "function": {"name", "description", "parameters"}}`."""

    mode: ToolMode
    tools: list[dict[str, Any]]
    names: list[str]  # the functions the model may call (one, for a named tool_choice)


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # assistant messages
    tool_call_id: str | None = None  # tool results
    name: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.content if isinstance(p, ImagePart))

    @property
    def image_urls(self) -> tuple[ImageUrl, ...]:
        return tuple(p for p in self.content if isinstance(p, ImageUrl))


@dataclass(frozen=True)
class Prediction:
    """What any surface asks for: a chat (`messages`) or a raw completion (`prompt`)."""

    model: str
    messages: tuple[Message, ...] = ()
    # A completion: the text to continue (no chat template), or its token ids.
    prompt: str | list[int] | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    tools: ToolSetup | None = None
    structured: dict[str, Any] | None = None  # {"schema": ...} (see GenerationParams)
    ttl: float | None = None  # idle TTL for a just-in-time load, seconds
    load: LoadRequest | None = None  # settings for a just-in-time load (context length...)
    # Reasoning (<think>…</think>) as ReasoningFragments, or left inline in the text;
    # None: the daemon's `separate_reasoning` setting.
    separate_reasoning: bool | None = None

    @property
    def is_chat(self) -> bool:
        return self.prompt is None


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str | list[int], ...]  # texts, or token ids of the model's vocabulary
    ttl: float | None = None


# -- output ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelUsed:
    """Which instance answered, for the surfaces that name it (v0's model_info, ...)."""

    identifier: str
    model_key: str
    path: str
    format: str
    arch: str | None
    quantization: str | None
    context_length: int  # the loaded context
    runtime_name: str
    runtime_version: str
    supported_formats: tuple[str, ...]
    device: str  # "CPU" or "GPU"
    load_seconds: float | None = None  # the model was loaded for this request, this long


@dataclass(frozen=True)
class PromptProgress:
    fraction: float  # 0.0 when the prompt is queued, 1.0 once it is read


@dataclass(frozen=True)
class TextFragment:
    text: str
    token: TokenEvent | None = None  # the sampled token, for logprobs (None: held-back text)


@dataclass(frozen=True)
class ReasoningFragment:
    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    delta: str  # JSON text, to be appended


@dataclass(frozen=True)
class ToolCallEnded:
    index: int
    call: ToolCall


@dataclass(frozen=True)
class ToolCallFailed:
    """Text that opened a tool call but did not parse as one; it also goes out as text."""

    text: str
    reason: str


@dataclass(frozen=True)
class PredictionDone:
    stats: DoneEvent
    text: str  # all of the content (reasoning and tool calls left out)
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    tokens: tuple[TokenEvent, ...]  # sampled tokens with logprobs, when asked for

    @property
    def stop_reason(self) -> str:
        """LM Studio's stop reason: the engine's, or "toolCalls" when the model called."""
        return "toolCalls" if self.tool_calls else self.stats.stop_reason.value

    @property
    def stopped_by_length(self) -> bool:
        return self.stats.stop_reason in (StopReason.MAX_TOKENS, StopReason.CONTEXT_FULL)


@dataclass(frozen=True)
class PredictionFailed:
    error: LmsError


PredictionEvent = (
    PromptProgress
    | TextFragment
    | ReasoningFragment
    | ToolCallStarted
    | ToolCallArguments
    | ToolCallEnded
    | ToolCallFailed
    | PredictionDone
    | PredictionFailed
)
