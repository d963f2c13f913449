"""Pure translators between the SDKs' shapes and ours: the KV config stacks, the chat
history, a `predict` channel's creation parameter into a `Prediction`, and our events,
stats and model records into the messages the SDKs read. No I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.catalog import ModelRecord, to_ls_json
from daemon.engines.base import GenerationParams
from daemon.errors import InvalidRequest
from daemon.instance import LoadRequest
from daemon.prediction.types import (
    ImagePart,
    Message,
    Prediction,
    PredictionDone,
    TextPart,
    ToolCall,
    ToolSetup,
)

# The template the SDKs send with complete(): the messages' text, as it is (raw completion).
COMPLETION_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def _invalid(message: str, param: str = "parameter") -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be an object", what)
    return value


# -- KV config stacks -------------------------------------------------------------------------


def flatten_stack(stack: Any) -> dict[str, Any]:
    """`{layers: [{layerName, config: {fields: [{key, value}]}}]}` as one dict of the
    values that apply: the first layer wins (the SDK puts its apiOverride first)."""
    if stack is None:
        return {}
    layers = _dict(stack, "configStack").get("layers") or []
    if not isinstance(layers, list):
        raise _invalid("configStack.layers must be a list")
    out: dict[str, Any] = {}
    for layer in reversed(layers):
        config = _dict(layer, "config layer").get("config") or {}
        fields = _dict(config, "config").get("fields") or []
        if not isinstance(fields, list):
            raise _invalid("config.fields must be a list")
        for item in fields:
            item = _dict(item, "config field")
            if isinstance(item.get("key"), str):
                out[item["key"]] = item.get("value")
    return out


def _checked(value: Any) -> Any:
    """A `{checked, value}` field's value; None when unchecked (plain values pass)."""
    if isinstance(value, dict) and "checked" in value:
        return value.get("value") if value.get("checked") else None
    return value


def _number(config: dict[str, Any], key: str, *, integer: bool = False) -> float | None:
    value = _checked(config.get(key))
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (integer and value != int(value)):
        raise _invalid(f"{key} must be a {'whole ' if integer else ''}number", key)
    return value  # type: ignore[no-any-return]


def load_request(config: dict[str, Any], prefix: str) -> LoadRequest:
    """`llm.load.*` / `embedding.load.*` settings: those we apply."""
    context = _number(config, f"{prefix}.contextLength", integer=True)
    if context is not None and context < 1:
        raise _invalid("contextLength must be at least 1", "contextLength")
    gpu = _checked(config.get(f"{prefix}.llama.acceleration.offloadRatio"))
    ratio: float | None = None
    if gpu == "max":
        ratio = 1.0
    elif gpu == "off":
        ratio = 0.0
    elif isinstance(gpu, int | float) and not isinstance(gpu, bool) and 0 <= gpu <= 1:
        ratio = float(gpu)
    return LoadRequest(
        context_length=None if context is None else int(context),
        gpu_ratio=ratio,
    )


def ttl_seconds(milliseconds: Any, name: str) -> float | None:
    if milliseconds is None:
        return None
    ok = isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool)
    if not ok or not math.isfinite(milliseconds) or milliseconds <= 0:
        raise _invalid(f"{name} must be a positive number of milliseconds", name)
    return float(milliseconds) / 1000


# -- history ----------------------------------------------------------------------------------


def _call_of(data: Any) -> ToolCall:
    data = _dict(data, "toolCallRequest")
    name = data.get("name")
    if not isinstance(name, str):
        raise _invalid("toolCallRequest.name must be a string", "history")
    arguments = data.get("arguments")
    text = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return ToolCall(str(data.get("id") or ""), name, text)


def history_messages(
    history: Any, files: Callable[[Any], ImagePart] | None = None
) -> tuple[Message, ...]:
    """The SDK's ChatHistoryData as our messages; a file part names an uploaded image
    (`files` finds it by its identifier; without it, files are refused)."""
    messages = _dict(history, "history").get("messages")
    if not isinstance(messages, list):
        raise _invalid("history.messages must be a list", "history")
    out: list[Message] = []
    for item in messages:
        item = _dict(item, "message")
        role = item.get("role")
        parts = item.get("content") or []
        if role not in ("system", "user", "assistant", "tool") or not isinstance(parts, list):
            raise _invalid(f"a message's role must be system, user, assistant or tool: {role!r}")
        texts: list[TextPart | ImagePart] = []
        calls: list[ToolCall] = []
        for part in parts:
            part = _dict(part, "content part")
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(TextPart(part["text"]))
            elif kind == "toolCallRequest":
                calls.append(_call_of(part.get("toolCallRequest")))
            elif kind == "toolCallResult":
                out.append(
                    Message(
                        "tool",
                        (TextPart(str(part.get("content", ""))),),
                        tool_call_id=part.get("toolCallId"),
                    )
                )
            elif kind == "file":
                if files is None:
                    raise InvalidRequest("files cannot be used here", param="history")
                if part.get("fileType", "image") != "image":
                    raise InvalidRequest("only image files can be sent to a model", param="history")
                texts.append(files(part.get("identifier")))
            else:
                raise _invalid(f"unknown content part type {kind!r}", "history")
        if role != "tool":
            out.append(Message(role, tuple(texts), tool_calls=tuple(calls)))
    return tuple(out)


# -- predict ----------------------------------------------------------------------------------


def tool_setup(value: Any) -> ToolSetup | None:
    if value is None:
        return None
    value = _dict(value, "rawTools")
    if value.get("type") == "none":
        return None
    if value.get("type") != "toolArray" or not isinstance(value.get("tools"), list):
        raise _invalid("rawTools must be {type: 'toolArray', tools: [...]} or {type: 'none'}")
    tools: list[dict[str, Any]] = []
    for tool in value["tools"]:
        function = _dict(_dict(tool, "tool").get("function"), "tool.function")
        if not isinstance(function.get("name"), str):
            raise _invalid("every tool needs a function name", "rawTools")
        tools.append({"type": "function", "function": function})
    names = [t["function"]["name"] for t in tools]
    return ToolSetup("auto", tools, names) if tools else None


def _structured(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(structured output, GBNF grammar) from `llm.prediction.structured`."""
    if value is None:
        return None, None
    value = _dict(value, "structured")
    kind = value.get("type")
    if kind == "none":
        return None, None
    if kind == "json":
        schema = value.get("jsonSchema")
        return {"schema": schema if isinstance(schema, dict) else {}}, None
    if kind == "gbnf" and isinstance(value.get("gbnfGrammar"), str):
        return None, value["gbnfGrammar"]
    raise _invalid("structured must be {type: 'json', jsonSchema} or {type: 'gbnf'}")


def _is_completion(value: Any) -> bool:
    """Whether `llm.prediction.promptTemplate` is the raw template complete() sends."""
    if value is None:
        return False
    template = _dict(value, "promptTemplate").get("jinjaPromptTemplate") or {}
    text = _dict(template, "jinjaPromptTemplate").get("template")
    if (
        value.get("type") == "jinja"
        and isinstance(text, str)
        and text.strip() == COMPLETION_TEMPLATE
    ):
        return True
    raise InvalidRequest(
        "custom prompt templates are not supported: the model's own template is used",
        param="promptTemplate",
        code="unsupported_value",
    )


def sampling(config: dict[str, Any], base: GenerationParams) -> GenerationParams:
    def pick(key: str, default: float, *, integer: bool = False) -> Any:
        value = _number(config, f"llm.prediction.{key}", integer=integer)
        return default if value is None else (int(value) if integer else float(value))

    max_tokens = _number(config, "llm.prediction.maxPredictedTokens", integer=True)
    stops = config.get("llm.prediction.stopStrings") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("stopStrings must be a list of strings", "stopStrings")
    temperature = pick("temperature", base.temperature)
    if temperature < 0:
        raise _invalid("temperature must be at least 0", "temperature")
    return GenerationParams(
        max_tokens=None if max_tokens is None or max_tokens < 0 else int(max_tokens),
        temperature=temperature,
        top_k=pick("topKSampling", base.top_k, integer=True),
        top_p=pick("topPSampling", base.top_p),
        min_p=pick("minPSampling", base.min_p),
        repeat_penalty=pick("repeatPenalty", base.repeat_penalty),
        seed=base.seed,
        stop=list(stops),
    )


@dataclass(frozen=True)
class PredictRequest:
    prediction: Prediction
    structured: bool  # the SDK parses the answer as JSON
    config: dict[str, Any]  # the flattened prediction config, echoed in `success`


def predict_request(
    model: str,
    parameter: Any,
    ttl: float | None,
    files: Callable[[Any], ImagePart] | None = None,
) -> PredictRequest:
    parameter = _dict(parameter, "creationParameter")
    config = flatten_stack(parameter.get("predictionConfigStack"))
    messages = history_messages(parameter.get("history"), files)
    structured, grammar = _structured(config.get("llm.prediction.structured"))
    params = sampling(config, GenerationParams())
    if grammar is not None:
        params = GenerationParams(**{**params.__dict__, "grammar": grammar})
    tools = tool_setup(config.get("llm.prediction.tools"))
    prompt: str | None = None
    if _is_completion(config.get("llm.prediction.promptTemplate")):
        prompt = "".join(m.text for m in messages)
        messages, tools = (), None
    prediction = Prediction(
        model=model,
        messages=messages,
        prompt=prompt,
        params=params,
        tools=tools,
        structured=structured,
        ttl=ttl,
        separate_reasoning=True,
    )
    return PredictRequest(prediction, structured is not None, config)


# -- replies ----------------------------------------------------------------------------------


def fragment(text: str, *, reasoning: str = "none", tokens: int = 1) -> dict[str, Any]:
    return {
        "type": "fragment",
        "fragment": {
            "content": text,
            "tokensCount": tokens,
            "containsDrafted": False,
            "reasoningType": reasoning,
            "isStructural": False,
        },
    }


def tool_call_request(call: ToolCall) -> dict[str, Any]:
    arguments = call.arguments_object()
    return {
        "type": "function",
        "id": call.id,
        "name": call.name,
        "arguments": arguments if isinstance(arguments, dict) else {},
    }


def stats(done: PredictionDone | None, *, cancelled: bool, gpu_layers: int) -> dict[str, Any]:
    if done is None:
        return {"stopReason": "userStopped"}
    event = done.stats
    reason = "userStopped" if cancelled else done.stop_reason
    return {
        "stopReason": reason,
        "tokensPerSecond": event.tokens_per_second,
        "numGpuLayers": gpu_layers,
        "timeToFirstTokenSec": event.time_to_first_token,
        "promptTokensCount": event.prompt_tokens,
        "predictedTokensCount": event.completion_tokens,
        "totalTokensCount": event.prompt_tokens + event.completion_tokens,
    }


def kv_config(values: dict[str, Any]) -> dict[str, Any]:
    return {"fields": [{"key": k, "value": v} for k, v in values.items()]}


def model_info(record: ModelRecord, model_key: str) -> dict[str, Any]:
    """LM Studio's ModelInfo (LlmInfo / EmbeddingModelInfo) of a downloaded model."""
    info: dict[str, Any] = dict(to_ls_json(record, model_key=model_key))
    if info.get("maxContextLength") is None:
        info["maxContextLength"] = 4096
    return info


def instance_info(
    record: ModelRecord, model_key: str, identifier: str, reference: str, context: int
) -> dict[str, Any]:
    """LM Studio's ModelInstanceInfo: the model info plus the instance's own fields."""
    return {
        **model_info(record, model_key),
        "identifier": identifier,
        "instanceReference": reference,
        "contextLength": context,
    }


def load_config(context: int, gpu_ratio: float | None, namespace: str) -> dict[str, Any]:
    """A loaded instance's settings as a KV config (a GPU ratio of None: all it can)."""
    prefix = "embedding" if namespace == "embedding" else "llm"
    return kv_config(
        {
            f"{prefix}.load.contextLength": context,
            f"{prefix}.load.llama.acceleration.offloadRatio": 1.0
            if gpu_ratio is None
            else gpu_ratio,
        }
    )
