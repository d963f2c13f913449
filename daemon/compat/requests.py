"""OpenAI request bodies (chat, completions, embeddings) -> the prediction service's
requests (daemon/prediction/types.py). `/v1` and `/api/v0` share these: LM Studio's v0
bodies are OpenAI's plus `ttl`. Pure: no I/O."""

from dataclasses import dataclass, replace
from typing import Any, Literal

from daemon.compat.durations import request_ttl
from daemon.compat.fields import in_range, optional, required
from daemon.compat.images import image_from_url
from daemon.compat.tools import parse_tools
from daemon.engines.base import GenerationParams
from daemon.errors import InvalidRequest
from daemon.prediction.types import (
    ContentPart,
    EmbeddingRequest,
    Message,
    Prediction,
    Role,
    TextPart,
    ToolCall,
)

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_STOP_STRINGS = 16
MAX_CHOICES = 16  # `n`: choices per chat or completion request
EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True)
class ParsedChat:
    prediction: Prediction
    stream: bool
    include_usage: bool
    n: int = 1  # choices: n predictions of the same request (choice_predictions)


@dataclass(frozen=True)
class ParsedCompletion:
    prediction: Prediction
    stream: bool
    include_usage: bool
    echo: bool = False
    n: int = 1


def parse_n(body: dict[str, Any]) -> int:
    """OpenAI's `n`: how many choices to generate for the request (1..MAX_CHOICES)."""
    n = optional(body, "n", int)
    if n is None:
        return 1
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(
            f"'n' must be between 1 and {MAX_CHOICES}", param="n", code="invalid_value"
        )
    return int(n)


def choice_predictions(prediction: Prediction, n: int) -> list[Prediction]:
    """The n predictions behind n choices: the same request, and with a seed, the seeds
    seed, seed+1, ... so that the choices differ yet each is reproducible."""
    seed = prediction.params.seed
    if n == 1 or seed is None:
        return [prediction] * n
    return [replace(prediction, params=replace(prediction.params, seed=seed + i)) for i in range(n)]


def _content_parts(content: Any, where: str) -> tuple[ContentPart, ...]:
    """Message content: a string, or content parts: text, and images (`image_url` with a
    data URL; the Responses API's `input_image` too)."""
    if content is None:
        return ()
    if isinstance(content, str):
        return (TextPart(content),)
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{where}.content' must be a string or an array of content parts",
            param=f"{where}.content",
            code="invalid_type",
        )
    parts: list[ContentPart] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(
                f"'{where}.content[{j}]' must be a content part object",
                param=f"{where}.content",
                code="invalid_type",
            )
        if part["type"] in ("text", "input_text"):
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"'{where}.content[{j}].text' must be a string",
                    param=f"{where}.content",
                    code="invalid_type",
                )
            parts.append(TextPart(part["text"]))
        elif part["type"] in ("image_url", "input_image"):
            url = part.get("image_url")
            if isinstance(url, dict):  # chat: {"url": ..., "detail": ...}
                url = url.get("url")
            parts.append(image_from_url(url, param=f"{where}.content[{j}].image_url"))
        else:
            raise InvalidRequest(
                f"content parts of type {part['type']!r} are not supported by this server "
                "yet; send text",
                param=f"{where}.content",
                code="unsupported_content",
            )
    return tuple(parts)


def _tool_calls(raw: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls, in OpenAI's shape."""
    calls: list[ToolCall] = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                f"'{where}.tool_calls[{j}]' must be "
                '{"id": ..., "type": "function", "function": {"name": ..., "arguments": ...}}',
                param=f"{where}.tool_calls",
                code="invalid_type",
            )
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = "{}" if arguments is None else _json_text(arguments, where)
        call_id = call.get("id")
        calls.append(
            ToolCall(call_id if isinstance(call_id, str) else "", function["name"], arguments)
        )
    return tuple(calls)


def _json_text(value: Any, where: str) -> str:
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        raise InvalidRequest(
            f"'{where}.tool_calls' arguments must be JSON text", param=f"{where}.tool_calls"
        ) from None


def parse_messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(
            "'messages' must be a non-empty array of messages",
            param="messages",
            code="invalid_type" if raw else "missing_required_parameter",
        )
    messages = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object", param="messages")
        role = message.get("role")
        if isinstance(role, list | dict) or role not in ROLES:  # JSON: the unhashables
            raise InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}",
                param=f"{where}.role",
                code="invalid_value",
            )
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and (role != "assistant" or not isinstance(tool_calls, list)):
            raise InvalidRequest(
                f"'{where}.tool_calls' must be an array on an assistant message",
                param=f"{where}.tool_calls",
            )
        internal: Role = "system" if role == "developer" else role
        tool_call_id, name = message.get("tool_call_id"), message.get("name")
        messages.append(
            Message(
                role=internal,
                content=_content_parts(message.get("content"), where),
                tool_calls=_tool_calls(tool_calls or [], where),
                tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
                name=name if isinstance(name, str) else None,
            )
        )
    return tuple(messages)


def parse_params(body: dict[str, Any], *, allow_n: bool = False) -> GenerationParams:
    """Sampling parameters. `n` is not one of them: a surface that serves several choices
    reads it with parse_n and says `allow_n`; any other refuses an `n` other than 1."""
    defaults = GenerationParams()
    n = optional(body, "n", int)
    if not allow_n and n is not None and n != 1:
        raise InvalidRequest(
            "'n' must be 1: this server returns one choice per request",
            param="n",
            code="invalid_value",
        )
    temperature = optional(body, "temperature", float)
    in_range("temperature", temperature, 0, 2)
    top_p = optional(body, "top_p", float)
    in_range("top_p", top_p, 0, 1)
    top_k = optional(body, "top_k", int)
    in_range("top_k", top_k, 0, 1_000_000)
    min_p = optional(body, "min_p", float)
    in_range("min_p", min_p, 0, 1)
    presence = optional(body, "presence_penalty", float)
    in_range("presence_penalty", presence, -2, 2)
    frequency = optional(body, "frequency_penalty", float)
    in_range("frequency_penalty", frequency, -2, 2)
    repeat = optional(body, "repeat_penalty", float)
    in_range("repeat_penalty", repeat, 0, 10)
    limit_name = "max_tokens"
    max_tokens = optional(body, limit_name, int)
    if max_tokens is None:
        limit_name = "max_completion_tokens"
        max_tokens = optional(body, limit_name, int)
    if max_tokens == -1:
        max_tokens = None  # LM Studio's -1: until the end of sequence or context
    elif max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(
            f"'{limit_name}' must be at least 1 (or -1 for no limit)",
            param=limit_name,
            code="invalid_value",
        )
    stop = optional(body, "stop", str, list)
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop)
    ):
        raise InvalidRequest(
            f"'stop' must be a string or up to {MAX_STOP_STRINGS} non-empty strings",
            param="stop",
            code="invalid_value",
        )
    seed = optional(body, "seed", int)
    logprobs = optional(body, "logprobs", bool, int)  # completions use an int: top-n
    top_logprobs = optional(body, "top_logprobs", int)
    if isinstance(logprobs, int) and not isinstance(logprobs, bool):
        top_logprobs, logprobs = logprobs, True
    in_range("top_logprobs", top_logprobs, 0, 20)
    bias_raw = optional(body, "logit_bias", dict) or {}
    logit_bias: dict[int, float] = {}
    for token, value in bias_raw.items():
        try:
            token_id = int(token)
        except ValueError:
            raise InvalidRequest(
                "'logit_bias' keys must be token ids", param="logit_bias", code="invalid_value"
            ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(
                "'logit_bias' values must be numbers", param="logit_bias", code="invalid_type"
            )
        in_range("logit_bias", value, -100, 100)
        logit_bias[token_id] = float(value)
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        min_p=defaults.min_p if min_p is None else min_p,
        repeat_penalty=defaults.repeat_penalty if repeat is None else repeat,
        presence_penalty=presence or 0.0,
        frequency_penalty=frequency or 0.0,
        seed=seed,
        stop=list(stop or []),
        logit_bias=logit_bias,
        logprobs=bool(logprobs),
        top_logprobs=top_logprobs or 0,
    )


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(optional(body, "stream", bool))
    options = optional(body, "stream_options", dict) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidRequest(
            "'stream_options.include_usage' must be a boolean",
            param="stream_options",
            code="invalid_type",
        )
    return stream, include_usage


def parse_chat(body: dict[str, Any]) -> ParsedChat:
    model = required(body, "model", str)
    messages = parse_messages(body.get("messages"))
    stream, include_usage = _stream_flags(body)
    prediction = Prediction(
        model=model,
        messages=messages,
        params=parse_params(body, allow_n=True),
        tools=parse_tools(body.get("tools"), body.get("tool_choice")),
        structured=parse_response_format(optional(body, "response_format", dict)),
        ttl=request_ttl(body),
    )
    return ParsedChat(prediction, stream=stream, include_usage=include_usage, n=parse_n(body))


def parse_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """Structured output: json_schema as given, json_object as any JSON object (LM Studio
    refuses json_object; OpenAI clients send it), text or nothing as free text."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"schema": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'response_format.json_schema.schema' must be a JSON schema object",
                param="response_format",
                code="invalid_value",
            )
        return {"schema": schema}
    raise InvalidRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
        param="response_format",
        code="invalid_value",
    )


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _inputs(raw: Any, field_name: str) -> list[str | list[int]]:
    """OpenAI's prompt/input forms: a string, an array of strings, an array of token ids,
    or an array of such arrays."""
    if isinstance(raw, str) or _is_token_ids(raw):
        return [raw]
    if (
        isinstance(raw, list)
        and raw
        and all(isinstance(item, str) or _is_token_ids(item) for item in raw)
    ):
        return list(raw)
    raise InvalidRequest(
        f"'{field_name}' must be a string, an array of strings, an array of token ids "
        "(non-negative integers) or an array of such arrays, not empty",
        param=field_name,
        code="invalid_type",
    )


def _check_ids(inputs: list[str | list[int]], field_name: str) -> None:
    if any(isinstance(item, list) and min(item) < 0 for item in inputs):
        raise InvalidRequest(
            f"'{field_name}' token ids must be non-negative integers",
            param=field_name,
            code="invalid_value",
        )


def parse_completion(body: dict[str, Any]) -> ParsedCompletion:
    model = required(body, "model", str)
    raw = body.get("prompt")
    if raw is None:
        raise InvalidRequest(
            "'prompt' is required", param="prompt", code="missing_required_parameter"
        )
    prompts = _inputs(raw, "prompt")
    if len(prompts) > 1:
        raise InvalidRequest(
            f"'prompt' holds {len(prompts)} prompts: this server takes one prompt per "
            "request (send several requests, or use 'n' for several choices)",
            param="prompt",
            code="invalid_value",
        )
    _check_ids(prompts, "prompt")
    prompt = prompts[0]
    echo = bool(optional(body, "echo", bool))
    if echo and not isinstance(prompt, str):
        raise InvalidRequest(
            "'echo' needs a text prompt: this server does not echo token ids",
            param="echo",
            code="invalid_value",
        )
    stream, include_usage = _stream_flags(body)
    prediction = Prediction(
        model=model,
        prompt=prompt,
        params=parse_params(body, allow_n=True),
        ttl=request_ttl(body),
    )
    return ParsedCompletion(
        prediction, stream=stream, include_usage=include_usage, echo=echo, n=parse_n(body)
    )


def parse_embedding(body: dict[str, Any]) -> EmbeddingRequest:
    model = required(body, "model", str)
    raw = body.get("input")
    if raw is None:
        raise InvalidRequest(
            "'input' is required", param="input", code="missing_required_parameter"
        )
    inputs = _inputs(raw, "input")
    _check_ids(inputs, "input")
    return EmbeddingRequest(model=model, inputs=tuple(inputs), ttl=request_ttl(body))


def parse_encoding_format(body: dict[str, Any]) -> EncodingFormat:
    """Embeddings' `encoding_format`: "float" (the default) or "base64"."""
    value = optional(body, "encoding_format", str)
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise InvalidRequest(
        "'encoding_format' must be 'float' or 'base64'",
        param="encoding_format",
        code="invalid_value",
    )
