"""The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json` (PUBLIC).

The paths and methods come from the app's registered route table at request time, so the
document never drifts from what the daemon answers; this module only adds, as data, the
request bodies of the JSON endpoints (their main fields: the parsers in daemon/compat/
are the authority and accept more) and each route's access level (`x-lmsd-access`,
docs/security.md). Every JSON body must be sent with `Content-Type: application/json`.
"""

from typing import Any

from aiohttp import web

from daemon.http.routes import ACCESS, Access
from lms.api.version import __version__

OPENAPI_PATH = "/openapi.json"

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
STRINGS: Schema = {"type": "array", "items": STRING}
TTL: Schema = {
    "description": "seconds, or a duration like '10m'; -1 means never",
    "type": ["number", "string"],
}


def _object(required: list[str], **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


SAMPLING: dict[str, Schema] = {
    "temperature": NUMBER,
    "top_p": NUMBER,
    "top_k": INTEGER,
    "min_p": NUMBER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "repeat_penalty": NUMBER,
    "seed": INTEGER,
    "stream": BOOLEAN,
    "ttl": TTL,
}
FUNCTION_TOOL = _object(
    ["type", "function"],
    type={"const": "function"},
    function=_object(["name"], name=STRING, description=STRING, parameters=OBJECT),
)
TOOL_CALL = _object(
    ["id", "type", "function"],
    id=STRING,
    type={"const": "function"},
    function=_object(["name", "arguments"], name=STRING, arguments=STRING),
)
CHAT_MESSAGE = _object(
    ["role"],
    role={"enum": ["system", "developer", "user", "assistant", "tool"]},
    content={"type": ["string", "array", "null"]},
    name=STRING,
    tool_calls=_array(TOOL_CALL),
    tool_call_id=STRING,
)
CHAT_COMPLETIONS = _object(
    ["model", "messages"],
    model=STRING,
    messages=_array(CHAT_MESSAGE),
    max_tokens=INTEGER,
    max_completion_tokens=INTEGER,
    n=INTEGER,
    stop={"type": ["string", "array"]},
    tools=_array(FUNCTION_TOOL),
    tool_choice={"type": ["string", "object"]},
    response_format=OBJECT,
    logprobs=BOOLEAN,
    top_logprobs=INTEGER,
    logit_bias=OBJECT,
    stream_options=OBJECT,
    **SAMPLING,
)
COMPLETIONS = _object(
    ["model", "prompt"],
    model=STRING,
    prompt={"type": ["string", "array"]},
    max_tokens=INTEGER,
    n=INTEGER,
    echo=BOOLEAN,
    stop={"type": ["string", "array"]},
    logprobs=INTEGER,
    **SAMPLING,
)
EMBEDDINGS = _object(
    ["model", "input"],
    model=STRING,
    input={"type": ["string", "array"]},
    encoding_format={"enum": ["float", "base64"]},
)
ANTHROPIC_BLOCK = _object(
    ["type"],
    type={"enum": ["text", "tool_use", "tool_result", "thinking", "image"]},
    text=STRING,
    id=STRING,
    name=STRING,
    input=OBJECT,
    tool_use_id=STRING,
    content={"type": ["string", "array"]},
)
ANTHROPIC_MESSAGES = _object(
    ["model", "max_tokens", "messages"],
    model=STRING,
    max_tokens=INTEGER,
    messages=_array(
        _object(
            ["role", "content"],
            role={"enum": ["user", "assistant"]},
            content={"type": ["string", "array"], "items": ANTHROPIC_BLOCK},
        )
    ),
    system={"type": ["string", "array"]},
    stop_sequences=STRINGS,
    tools=_array(_object(["name", "input_schema"], name=STRING, input_schema=OBJECT)),
    tool_choice=_object(["type"], type={"enum": ["auto", "any", "tool", "none"]}, name=STRING),
    thinking=OBJECT,
    metadata=OBJECT,
    temperature=NUMBER,
    top_p=NUMBER,
    top_k=INTEGER,
    stream=BOOLEAN,
)
ANTHROPIC_COUNT = _object(
    ["model", "messages"],
    model=STRING,
    messages=_array(OBJECT),
    system={"type": ["string", "array"]},
    tools=_array(OBJECT),
)
RESPONSES_ITEM = _object(
    ["type"],
    type={"enum": ["message", "function_call", "function_call_output", "reasoning"]},
    role={"enum": ["user", "assistant", "system", "developer"]},
    content={"type": ["string", "array"]},
    call_id=STRING,
    name=STRING,
    arguments=STRING,
    output=STRING,
)
RESPONSES = _object(
    ["model"],
    model=STRING,
    input={"type": ["string", "array"], "items": RESPONSES_ITEM},
    instructions=STRING,
    tools=_array(OBJECT),
    tool_choice={"type": ["string", "object"]},
    text=OBJECT,
    max_output_tokens=INTEGER,
    previous_response_id=STRING,
    store=BOOLEAN,
    reasoning=OBJECT,
    temperature=NUMBER,
    top_p=NUMBER,
    stream=BOOLEAN,
)
REST_V1_CHAT = _object(
    ["model", "input"],
    model=STRING,
    input={"type": ["string", "array"]},
    system_prompt=STRING,
    reasoning=STRING,
    integrations=_array(OBJECT),
    previous_response_id=STRING,
    store=BOOLEAN,
    context_length=INTEGER,
    max_output_tokens=INTEGER,
    temperature=NUMBER,
    top_p=NUMBER,
    top_k=INTEGER,
    stream=BOOLEAN,
)
LOAD = _object(
    ["model"],
    model=STRING,
    identifier=STRING,
    context_length=INTEGER,
    parallel=INTEGER,
    gpu={"type": ["string", "number"]},
    ttl=TTL,
    kv_pool={"enum": ["shared", "per_slot"]},
    flash_attention={"type": ["boolean", "string"]},
    kv_cache_type_k={"enum": ["f16", "q8_0", "q4_0"]},
    kv_cache_type_v={"enum": ["f16", "q8_0", "q4_0"]},
    threads=INTEGER,
    use_mmap=BOOLEAN,
    keep_model_in_memory=BOOLEAN,
    seed=INTEGER,
    offload_kv_cache_to_gpu=BOOLEAN,
    estimate_only=BOOLEAN,
    force=BOOLEAN,
    stream=BOOLEAN,  # server-sent model_load.* events (http/load_stream.py)
)
UNLOAD = _object([], instance_id=STRING, all=BOOLEAN)
MODEL_DEFAULTS = _object(
    ["model"],
    model=STRING,
    set=OBJECT,  # load settings by the load API's names; null removes one
    reset={"type": ["boolean", "array"], "items": STRING},
)
SERVER_START = _object(
    [], port=INTEGER, bind=STRING, cors={"type": ["boolean", "array"], "items": STRING}
)
CONFIG_SET = _object(["key", "value"], key=STRING, value={})
KEY_CREATE = _object([], name=STRING, scope={"enum": ["inference", "admin"]})
IMPORT = _object(
    ["path"],
    path=STRING,
    mode={"enum": ["move", "copy", "hard-link", "symbolic-link"]},
    user_repo=STRING,
    dry_run=BOOLEAN,
)
UPSTREAM_ADD = _object(
    ["name", "base_url"],
    name=STRING,
    base_url=STRING,
    api_key=STRING,  # stored 0600, never returned
    models=STRINGS,  # upstream ids to expose ("id=our-key" renames); all when absent
    priority=INTEGER,
    connect_timeout=NUMBER,
    first_byte_timeout=NUMBER,
    idle_timeout=NUMBER,
    max_in_flight=INTEGER,
    replace=BOOLEAN,
)
UPSTREAM_POLICY = _object(
    ["model", "policy"],
    model=STRING,
    policy={"enum": ["local_only", "prefer_local", "prefer_remote", "spill_over", None]},
)

# (method, path) -> the JSON request body. A POST route missing here takes no body.
REQUEST_BODIES: dict[tuple[str, str], Schema] = {
    ("POST", "/v1/chat/completions"): CHAT_COMPLETIONS,
    ("POST", "/api/v0/chat/completions"): CHAT_COMPLETIONS,
    ("POST", "/v1/completions"): COMPLETIONS,
    ("POST", "/api/v0/completions"): COMPLETIONS,
    ("POST", "/v1/embeddings"): EMBEDDINGS,
    ("POST", "/api/v0/embeddings"): EMBEDDINGS,
    ("POST", "/v1/messages"): ANTHROPIC_MESSAGES,
    ("POST", "/v1/messages/count_tokens"): ANTHROPIC_COUNT,
    ("POST", "/v1/responses"): RESPONSES,
    ("POST", "/api/v1/chat"): REST_V1_CHAT,
    ("POST", "/api/v1/models/load"): LOAD,
    ("POST", "/api/v1/models/unload"): UNLOAD,
    ("POST", "/api/admin/model-defaults"): MODEL_DEFAULTS,
    ("POST", "/api/admin/server/start"): SERVER_START,
    ("POST", "/api/admin/config"): CONFIG_SET,
    ("POST", "/api/admin/keys"): KEY_CREATE,
    ("POST", "/api/admin/models/import"): IMPORT,
    ("POST", "/api/admin/upstreams"): UPSTREAM_ADD,
    ("POST", "/api/admin/upstreams/policy"): UPSTREAM_POLICY,
}
OPTIONAL_BODIES = {("POST", "/api/admin/server/start")}  # an empty POST is fine too

ERROR_RESPONSE: Schema = {
    "description": "an error, in the surface's error shape (OpenAI's, Anthropic's or "
    "LM Studio v1's)",
    "content": {"application/json": {"schema": OBJECT}},
}


def _operation(method: str, path: str, access: Access) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()} {path}",
        "x-lmsd-access": access.value,
        "responses": {
            "200": {"description": "success (JSON; an SSE stream when `stream` is true)"},
            "4XX": ERROR_RESPONSE,
            "5XX": ERROR_RESPONSE,
        },
    }
    if access is not Access.PUBLIC:
        operation["security"] = [{"bearer": []}, {"apiKey": []}, {}]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": STRING}
        for name in _path_parameters(path)
    ]
    if parameters:
        operation["parameters"] = parameters
    body = REQUEST_BODIES.get((method, path))
    if body is not None:
        operation["requestBody"] = {
            "required": (method, path) not in OPTIONAL_BODIES,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def document(routes: list[tuple[str, str, Access]]) -> dict[str, Any]:
    """The OpenAPI document of (method, path, access) routes; paths as aiohttp's canonical
    form (`/v1/models/{model}`)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, access in sorted(routes, key=lambda r: (r[1], r[0])):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, access)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lmsd",
            "version": __version__,
            "description": "A headless local LLM server, wire-compatible with LM Studio: "
            "OpenAI, Anthropic, LM Studio v0/v1 and daemon control routes. JSON bodies "
            "need `Content-Type: application/json`. `x-lmsd-access` is each route's "
            "access level over TCP (docs/security.md).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            }
        },
    }


def app_routes(app: web.Application) -> list[tuple[str, str, Access]]:
    """(method, path, access) of every route registered in the app's route table."""
    out: list[tuple[str, str, Access]] = []
    for route, access in app[ACCESS].items():
        resource = route.resource
        if resource is not None:
            out.append((route.method, resource.canonical, access))
    return out


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(app_routes(request.app)))
