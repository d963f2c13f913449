"""Internal results -> OpenAI response bodies and SSE chunks, plus LM Studio v0 extras
(`stats`, `model_info`, `runtime`). `/v1` and `/api/v0` differ only in `lmstudio_extras`."""

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.catalog import ModelRecord
from daemon.engines.base import DoneEvent, EngineInfo, StopReason, TokenEvent

FINISH_REASONS = {
    StopReason.EOS: "stop",
    StopReason.STOP_STRING: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.CONTEXT_FULL: "length",
    StopReason.USER_STOPPED: "stop",
}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Generated:
    """What one generation produced, gathered from its events."""

    text: str = ""
    tokens: list[TokenEvent] = field(default_factory=list)
    done: DoneEvent | None = None

    def add(self, event: TokenEvent) -> None:
        self.text += event.text
        if event.token_id is not None:
            self.tokens.append(event)


def usage(done: DoneEvent) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def finish_reason(done: DoneEvent, *, tool_calls: bool = False) -> str:
    return "tool_calls" if tool_calls else FINISH_REASONS[done.stop_reason]


def lmstudio_extras(
    done: DoneEvent, record: ModelRecord, info: EngineInfo, *, stop_reason: str | None = None
) -> dict[str, Any]:
    """The fields LM Studio's /api/v0 adds to every completion."""
    return {
        "stats": {
            "tokens_per_second": done.tokens_per_second,
            "time_to_first_token": round(done.time_to_first_token, 3),
            "generation_time": round(done.generation_time, 3),
            "stop_reason": stop_reason or done.stop_reason.value,
        },
        "model_info": {
            "arch": info.arch or record.arch,
            "quant": info.quant or record.quantization,
            "format": record.format,
            "context_length": info.context_length,
        },
        "runtime": {
            "name": info.runtime_name,
            "version": info.runtime_version,
            "supported_formats": list(info.supported_formats),
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


def chat_completion(
    model_id: str,
    generated: Generated,
    *,
    want_logprobs: bool,
    tool_calls: list[dict[str, Any]] | None = None,
    completion_id: str | None = None,
) -> dict[str, Any]:
    assert generated.done is not None
    message: dict[str, Any] = {"role": "assistant", "content": generated.text}
    if tool_calls:
        message["content"] = None
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id or new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": model_id,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(generated.tokens) if want_logprobs else None,
                "finish_reason": finish_reason(generated.done, tool_calls=bool(tool_calls)),
            }
        ],
        "usage": usage(generated.done),
    }


def text_completion(
    model_id: str, generated: Generated, *, want_logprobs: bool, prefix: str = ""
) -> dict[str, Any]:
    assert generated.done is not None
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "text": prefix + generated.text,
                "logprobs": completion_logprobs(generated.tokens) if want_logprobs else None,
                "finish_reason": finish_reason(generated.done),
            }
        ],
        "usage": usage(generated.done),
    }


def chat_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    *,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "system_fingerprint": model_id,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }


def text_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    *,
    text: str,
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
    }


def usage_chunk(base: dict[str, Any], done: DoneEvent) -> dict[str, Any]:
    """The extra last chunk `stream_options.include_usage` asks for: no choices, usage."""
    return {**base, "choices": [], "usage": usage(done)}


def embeddings(model_id: str, vectors: list[list[float]], prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": vector, "index": i}
            for i, vector in enumerate(vectors)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
