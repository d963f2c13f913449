"""What each SDK endpoint does, through the manager (loads, listings, unloads) and the
prediction service (predictions, embeddings), like every other surface. An RPC endpoint
returns its result; a channel endpoint sends messages on its channel and returns when
it is done (session.py closes the channel then, or reports what it raised). Remote
models (remote.py) are listed beside the local ones and served by name through the
same prediction service, whose router sends them upstream.

Access (docs/sdk.md, docs/security.md): the connection is at the inference level. What
an inference caller can already do over HTTP it may do here: predict, embed, list, and
load *just in time* (getOrLoad, and loadModel without an admin key become JIT loads,
with a TTL and auto-evict, and only while JIT loading is on). Pinning a model (a manual
load) and unloading anything but a JIT-loaded instance need an admin key, as
`/api/v1/models/load|unload` do.
"""

from __future__ import annotations

from typing import Any

from daemon.errors import InvalidRequest
from daemon.instance import Instance
from daemon.prediction.service import template_messages
from daemon.prediction.types import EmbeddingRequest
from daemon.sdk import loads, remote, translate
from daemon.sdk.context import (
    ChannelHandler,
    Context,
    NoModelMatching,
    Rpc,
    as_dict,
    context_length,
    instance_info,
    loaded_instances,
)
from daemon.sdk.predict import predict

# -- system -----------------------------------------------------------------------------------


async def list_downloaded(ctx: Context, param: Any) -> Any:
    catalog = await ctx.store.catalog()
    listed = [
        translate.model_info(r, catalog.public_id(r)) for r in catalog.records if r.error is None
    ]
    return remote.with_remote(ctx, listed)


async def version(ctx: Context, param: Any) -> Any:
    return {"version": ctx.version, "build": 0}


# -- llm and embedding: listings and info -----------------------------------------------------


def _text(param: dict[str, Any], name: str) -> str:
    value = param.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    return value


async def list_loaded(ctx: Context, param: Any) -> Any:
    local = [await instance_info(ctx, i) for i in loaded_instances(ctx)]
    return local + [remote.instance_info(m) for m in await remote.remote_models(ctx)]


async def get_model_info(ctx: Context, param: Any) -> Any:
    param = as_dict(param, "parameter")
    try:
        target = await remote.loaded(ctx, param.get("specifier"))
    except NoModelMatching:
        if param.get("throwIfNotFound", True):
            raise
        return None
    if isinstance(target, remote.RemoteModel):
        return remote.instance_info(target)
    return await instance_info(ctx, target)


async def get_load_config(ctx: Context, param: Any) -> Any:
    target = await remote.loaded(ctx, as_dict(param, "parameter").get("specifier"))
    if isinstance(target, remote.RemoteModel):
        return remote.load_config()
    return translate.load_config(context_length(target), target.config.gpu_ratio, ctx.namespace)


async def _local(ctx: Context, specifier: Any) -> Instance:
    """The loaded instance for what needs the model's own tokenizer (not an upstream's)."""
    target = await remote.loaded(ctx, specifier)
    if isinstance(target, remote.RemoteModel):
        raise remote.no_tokenizer(target)
    return target


async def count_tokens(ctx: Context, param: Any) -> Any:
    param = as_dict(param, "parameter")
    inst = await _local(ctx, param.get("specifier"))
    text = _text(param, "inputString")
    async with ctx.manager.lease(inst.identifier) as lease:
        return {"tokenCount": await lease.engine.count_tokens(text)}


async def tokenize(ctx: Context, param: Any) -> Any:
    param = as_dict(param, "parameter")
    inst = await _local(ctx, param.get("specifier"))
    text = _text(param, "inputString")
    async with ctx.manager.lease(inst.identifier) as lease:
        return {"tokens": await lease.engine.tokenize(text)}


async def apply_prompt_template(ctx: Context, param: Any) -> Any:
    param = as_dict(param, "parameter")
    inst = await _local(ctx, param.get("specifier"))
    messages = translate.history_messages(param.get("history"), ctx.files.image)
    config = translate.flatten_stack(param.get("predictionConfigStack"))
    tools = translate.tool_setup(config.get("llm.prediction.tools"))
    async with ctx.manager.lease(inst.identifier) as lease:
        formatted = await lease.engine.render_chat(
            template_messages(messages), tools.tools if tools else None
        )
    return {"formatted": formatted}


async def embed_string(ctx: Context, param: Any) -> Any:
    param = as_dict(param, "parameter")
    name, _ = await remote.find(ctx, param.get("modelSpecifier"))
    text = _text(param, "inputString")
    embedded = await ctx.predictions.embed(EmbeddingRequest(model=name, inputs=(text,)))
    return {"embedding": embedded.vectors[0]}


# -- files ------------------------------------------------------------------------------------


async def upload_file(ctx: Context, param: Any) -> Any:
    param = as_dict(param, "parameter")
    name = param.get("name")
    return await ctx.files.upload(
        name if isinstance(name, str) else "file", param.get("contentBase64")
    )


RPCS: dict[str, dict[str, Rpc]] = {
    "system": {"listDownloadedModels": list_downloaded, "version": version},
    "llm": {
        "listLoaded": list_loaded,
        "getModelInfo": get_model_info,
        "getLoadConfig": get_load_config,
        "unloadModel": loads.unload_model,
        "countTokens": count_tokens,
        "tokenize": tokenize,
        "applyPromptTemplate": apply_prompt_template,
    },
    "embedding": {
        "listLoaded": list_loaded,
        "getModelInfo": get_model_info,
        "getLoadConfig": get_load_config,
        "unloadModel": loads.unload_model,
        "countTokens": count_tokens,
        "tokenize": tokenize,
        "embedString": embed_string,
    },
    "files": {"uploadFileBase64": upload_file},
}

CHANNELS: dict[str, dict[str, ChannelHandler]] = {
    "llm": {"getOrLoad": loads.get_or_load, "loadModel": loads.load_model, "predict": predict},
    "embedding": {"getOrLoad": loads.get_or_load, "loadModel": loads.load_model},
}
