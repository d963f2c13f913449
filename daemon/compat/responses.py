"""The prediction service's events -> OpenAI response bodies and SSE chunks, plus LM
Studio v0 extras (`stats`, `model_info`, `runtime`). `/v1` and `/api/v0` differ only in
`lmstudio_extras`. Pure: no I/O.

Reasoning separated from the answer goes out as `reasoning_content` (LM Studio's name);
tool calls as `tool_calls`, the content then null.
"""

import base64
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from daemon.compat.tools import to_openai_call
from daemon.engines.base import DoneEvent, StopReason, TokenEvent
from daemon.prediction.types import (
    ModelUsed,
    PredictionDone,
    PredictionEvent,
    ReasoningFragment,
    TextFragment,
    ToolCallArguments,
    ToolCallStarted,
)

FINISH_REASONS = {
    StopReason.EOS: "stop",
    StopReason.STOP_STRING: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.CONTEXT_FULL: "length",
    StopReason.USER_STOPPED: "stop",
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(stats: DoneEvent) -> dict[str, Any]:
    return choices_usage([stats])


def choices_usage(stats: list[DoneEvent]) -> dict[str, Any]:
    """Usage of one request's choices (n > 1): the prompt once, every choice's completion.
    `cached_tokens`: the prompt tokens reused from the model's prompt cache."""
    prompt = stats[0].prompt_tokens
    completion = sum(s.completion_tokens for s in stats)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": stats[0].cached_tokens},
    }


def finish_reason(done: PredictionDone) -> str:
    return "tool_calls" if done.tool_calls else FINISH_REASONS[done.stats.stop_reason]


def lmstudio_extras(done: PredictionDone, model: ModelUsed) -> dict[str, Any]:
    """The fields LM Studio's /api/v0 adds to every completion."""
    stats = done.stats
    return {
        "stats": {
            "tokens_per_second": stats.tokens_per_second,
            "time_to_first_token": round(stats.time_to_first_token, 3),
            "generation_time": round(stats.generation_time, 3),
            "stop_reason": done.stop_reason,
        },
        "model_info": {
            "arch": model.arch,
            "quant": model.quantization,
            "format": model.format,
            "context_length": model.context_length,
        },
        "runtime": {
            "name": model.runtime_name,
            "version": model.runtime_version,
            "supported_formats": list(model.supported_formats),
        },
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(tokens: list[TokenEvent]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.piece,
                "logprob": t.logprob,
                "bytes": t.piece_bytes if t.piece_bytes is not None else _token_bytes(t.piece),
                "top_logprobs": [
                    {"token": tok, "logprob": lp, "bytes": _token_bytes(tok)}
                    for tok, lp in (t.top_logprobs or [])
                ],
            }
            for t in tokens
        ]
    }


def completion_logprobs(tokens: list[TokenEvent]) -> dict[str, Any]:
    offsets, offset = [], 0
    for t in tokens:
        offsets.append(offset)
        offset += len(t.piece)
    return {
        "tokens": [t.piece for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top_logprobs or []) for t in tokens],
        "text_offset": offsets,
    }


def chat_choice(index: int, done: PredictionDone, *, want_logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.text}
    if done.reasoning:
        message["reasoning_content"] = done.reasoning
    if done.tool_calls:
        message["content"] = None
        message["tool_calls"] = [to_openai_call(call) for call in done.tool_calls]
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(list(done.tokens)) if want_logprobs else None,
        "finish_reason": finish_reason(done),
    }


def chat_completion(
    model_id: str, done: PredictionDone, *, want_logprobs: bool, completion_id: str | None = None
) -> dict[str, Any]:
    return chat_completion_choices(
        model_id, [done], want_logprobs=want_logprobs, completion_id=completion_id
    )


def chat_completion_choices(
    model_id: str,
    dones: list[PredictionDone],
    *,
    want_logprobs: bool,
    completion_id: str | None = None,
) -> dict[str, Any]:
    """A chat completion with one choice per prediction (`n`), in order."""
    return {
        "id": completion_id or new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": model_id,
        "choices": [
            chat_choice(i, done, want_logprobs=want_logprobs) for i, done in enumerate(dones)
        ],
        "usage": choices_usage([done.stats for done in dones]),
    }


def text_completion(
    model_id: str, done: PredictionDone, *, want_logprobs: bool, prefix: str = ""
) -> dict[str, Any]:
    return text_completion_choices(model_id, [done], want_logprobs=want_logprobs, prefix=prefix)


def text_completion_choices(
    model_id: str, dones: list[PredictionDone], *, want_logprobs: bool, prefix: str = ""
) -> dict[str, Any]:
    """A text completion with one choice per prediction (`n`), in order."""
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": i,
                "text": prefix + done.text,
                "logprobs": completion_logprobs(list(done.tokens)) if want_logprobs else None,
                "finish_reason": finish_reason(done),
            }
            for i, done in enumerate(dones)
        ],
        "usage": choices_usage([done.stats for done in dones]),
    }


def chat_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    *,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "system_fingerprint": model_id,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        ],
    }


def text_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    *,
    text: str,
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
    }


def usage_chunk(base: dict[str, Any], stats: DoneEvent | list[DoneEvent]) -> dict[str, Any]:
    """The extra last chunk `stream_options.include_usage` asks for: no choices, usage
    (of every choice, given their stats)."""
    return {
        **base,
        "choices": [],
        "usage": choices_usage(stats if isinstance(stats, list) else [stats]),
    }


def encode_vector(vector: list[float]) -> str:
    """An embedding as OpenAI's `encoding_format: "base64"`: its little-endian float32
    bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings(
    model_id: str, vectors: list[list[float]], prompt_tokens: int, *, encoding: str = "float"
) -> dict[str, Any]:
    """`encoding`: "float" (arrays of numbers) or "base64" (encode_vector)."""
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "embedding": encode_vector(vector) if encoding == "base64" else vector,
                "index": i,
            }
            for i, vector in enumerate(vectors)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@dataclass
class ChunkStream:
    """One streamed chat or text completion: prediction events in, OpenAI chunks out.
    `v0_model` adds LM Studio's extras to the last chunk (/api/v0). With n > 1 there is one
    per choice (`index`), sharing `completion_id` and `created`."""

    model_id: str
    chat: bool
    want_logprobs: bool
    include_usage: bool
    v0_model: ModelUsed | None = None
    completion_id: str = ""
    created: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        self.completion_id = self.completion_id or new_id("chatcmpl" if self.chat else "cmpl")
        self.created = self.created or int(time.time())

    def start(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})] if self.chat else []

    def event(self, event: PredictionEvent) -> list[dict[str, Any]]:
        if isinstance(event, TextFragment):
            return self._text(event)
        if isinstance(event, ReasoningFragment):
            return [self._chunk({"reasoning_content": event.text})] if self.chat else []
        if isinstance(event, ToolCallStarted):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, ToolCallArguments):
            delta = {"index": event.index, "function": {"arguments": event.delta}}
            return [self._chunk({"tool_calls": [delta]})]
        if isinstance(event, PredictionDone):
            return self._finish(event)
        return []  # progress, call ends and failures say nothing more in OpenAI's stream

    def _text(self, event: TextFragment) -> list[dict[str, Any]]:
        with_logprobs = self.want_logprobs and event.token is not None
        if not event.text and not with_logprobs:
            return []  # held back (a possible stop string); nothing to say yet
        logprobs = None
        if with_logprobs and event.token is not None:
            render = chat_logprobs if self.chat else completion_logprobs
            logprobs = render([event.token])
        return [self._chunk({"content": event.text}, text=event.text, logprobs=logprobs)]

    def _finish(self, done: PredictionDone) -> list[dict[str, Any]]:
        last = self._chunk({}, text="", finish=finish_reason(done))
        if self.v0_model is not None:
            last.update(lmstudio_extras(done, self.v0_model))
        chunks = [last]
        if self.include_usage:
            chunks.append(usage_chunk(last, done.stats))
        return chunks

    def _chunk(
        self,
        delta: dict[str, Any],
        *,
        text: str = "",
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        ids = (self.completion_id, self.model_id, self.created)
        if self.chat:
            return chat_chunk(*ids, delta=delta, finish=finish, logprobs=logprobs, index=self.index)
        return text_chunk(*ids, text=text, finish=finish, logprobs=logprobs, index=self.index)
