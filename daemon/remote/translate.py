"""Engine requests <-> OpenAI request bodies and stream chunks: pure functions.

Whatever surface a request came in on (OpenAI, Responses, Messages, LM Studio REST, the
SDK), the prediction service has made an engine request of it; here that becomes the body
of `/v1/chat/completions` or `/v1/completions`, and each chunk of the upstream's stream
becomes the engine's events. Tool calls the upstream returns as structured deltas become
`<tool_call>{...}</tool_call>` text, which the prediction service's parser reads back, so
every surface reports them in its own shape.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from daemon.engines.base import (
    ChatRequest,
    CompletionRequest,
    DoneEvent,
    GenerationParams,
    GenerationRequest,
    StopReason,
)
from daemon.errors import InvalidRequest

FINISH_REASONS = {
    "stop": StopReason.EOS,
    "length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.EOS,
    "function_call": StopReason.EOS,
    "content_filter": StopReason.EOS,
}


class BadChunk(ValueError):
    """A chunk that is not in OpenAI's shape."""


def _params(params: GenerationParams, *, chat: bool) -> dict[str, Any]:
    if params.grammar is not None:
        raise InvalidRequest(
            "a grammar cannot be sent to a remote model; use a JSON schema (response_format)",
            param="grammar",
        )
    if params.logprobs:
        raise InvalidRequest("logprobs are not available from remote models", param="logprobs")
    body: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        # Not OpenAI's, but llama.cpp's, vLLM's and ours (others ignore them).
        "top_k": params.top_k,
        "min_p": params.min_p,
        "repeat_penalty": params.repeat_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
    structured = params.structured
    if structured is not None:
        if structured.get("prefix") or structured.get("suffix") or structured.get("repeat"):
            raise InvalidRequest(
                "this structured output cannot be sent to a remote model", param="tools"
            )
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": structured.get("schema"), "strict": True},
        }
    return body


def request_body(model: str, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
    """The path under /v1 and the JSON body of a streamed request for `model`."""
    if isinstance(request, ChatRequest):
        body: dict[str, Any] = {"model": model, "messages": request.messages}
        if request.tools:
            body["tools"] = request.tools
        path = "/chat/completions"
        chat = True
    else:
        assert isinstance(request, CompletionRequest)
        body = {"model": model, "prompt": request.prompt}
        path = "/completions"
        chat = False
    body.update(_params(request.params, chat=chat))
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return path, body


@dataclass
class StreamState:
    """What a stream has said so far, beyond the text handed on at once."""

    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chunks_with_text: int = 0
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def calls_text(self) -> str:
        """The tool calls the upstream made, as text the tool-call parser reads."""
        out = []
        for _, call in sorted(self.calls.items()):
            try:
                arguments: Any = json.loads(call.get("arguments") or "{}")
            except ValueError:
                arguments = call.get("arguments", "")
            payload = json.dumps({"name": call.get("name", ""), "arguments": arguments})
            out.append(f"<tool_call>{payload}</tool_call>")
        return "".join(out)


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadChunk(f"{what} is not a string")
    return value


def read_chunk(chunk: Any, state: StreamState) -> str:
    """The text a chunk adds (chat `delta.content` or completions `text`); records its
    tool-call deltas, finish reason and usage in `state`. BadChunk when malformed."""
    if not isinstance(chunk, dict):
        raise BadChunk("a chunk is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BadChunk(f"the upstream reported an error: {str(message)[:500]}")
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            state.prompt_tokens, state.completion_tokens = prompt, completion
    choices = chunk.get("choices")
    if choices is None or choices == []:
        return ""
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise BadChunk("'choices' is not a list of objects")
    choice = choices[0]
    if choice.get("finish_reason") is not None:
        state.finish_reason = _str(choice["finish_reason"], "finish_reason")
    if "delta" in choice:
        delta = choice["delta"]
        if not isinstance(delta, dict):
            raise BadChunk("'delta' is not an object")
        text = _str(delta.get("content"), "delta.content")
        for call in delta.get("tool_calls") or []:
            _add_call_delta(call, state)
    else:
        text = _str(choice.get("text"), "text")
    if text:
        state.chunks_with_text += 1
    return text


def _add_call_delta(call: Any, state: StreamState) -> None:
    if not isinstance(call, dict):
        raise BadChunk("a tool call delta is not an object")
    index = call.get("index", len(state.calls))
    if not isinstance(index, int) or not 0 <= index < 128:
        raise BadChunk("a tool call delta has a bad index")
    function = call.get("function") or {}
    if not isinstance(function, dict):
        raise BadChunk("a tool call's function is not an object")
    entry = state.calls.setdefault(index, {})
    for name in ("name", "arguments"):
        part = _str(function.get(name), f"function.{name}")
        if len(entry.get(name, "")) + len(part) > 1 << 20:
            raise BadChunk("a tool call is over 1 MiB")
        entry[name] = entry.get(name, "") + part


def done_event(
    state: StreamState, *, time_to_first_token: float, generation_time: float
) -> DoneEvent:
    completion = state.completion_tokens
    if completion is None:
        completion = state.chunks_with_text  # an upstream without usage: one token a chunk
    rate = completion / generation_time if generation_time > 0 and completion > 1 else 0.0
    return DoneEvent(
        stop_reason=FINISH_REASONS.get(state.finish_reason or "stop", StopReason.EOS),
        prompt_tokens=state.prompt_tokens or 0,
        completion_tokens=completion,
        time_to_first_token=time_to_first_token,
        generation_time=generation_time,
        tokens_per_second=rate,
    )


def embed_body(model: str, texts: list[str] | list[list[int]]) -> dict[str, Any]:
    return {"model": model, "input": texts}


def read_embeddings(data: Any, count: int) -> tuple[list[list[float]], int]:
    """The vectors (in input order) and prompt tokens of an embeddings response."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BadChunk("the embeddings response has no 'data' list")
    items = data["data"]
    if len(items) != count:
        raise BadChunk(f"the embeddings response has {len(items)} vectors for {count} inputs")
    vectors: list[list[float] | None] = [None] * count
    for position, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
            raise BadChunk("an embedding is not a list of numbers")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
            raise BadChunk("an embedding has a bad index")
        vector = item["embedding"]
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector):
            raise BadChunk("an embedding is not a list of numbers")
        vectors[index] = [float(x) for x in vector]
    usage = data.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return [v for v in vectors if v is not None], tokens if isinstance(tokens, int) else 0


def model_ids(data: Any) -> list[str]:
    """The model ids of a `/v1/models` response."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BadChunk("the models response has no 'data' list")
    ids = [m.get("id") for m in data["data"] if isinstance(m, dict)]
    # Ids become keys in listings, logs and terminals: printable, bounded, at most 1,000.
    return [i for i in ids if isinstance(i, str) and 0 < len(i) <= 512 and i.isprintable()][:1000]
