"""Remote models (docs/scale-out.md) as the SDKs see them. A model an upstream serves, and
that the router sends upstream first (policy.py), is *loaded* for the SDKs: it is served
now and there is nothing to load or unload here, as `/api/v0/models` says `loaded` of it.
Its model info is a local model's, marked remote as the HTTP listings mark it:
`deviceIdentifier` names the first upstream serving it, `remote` lists them all. Its
handle's predictions and embeddings go by name through the prediction service, whose
router sends them upstream: the SDK has no routing of its own.

The SDKs accept only file formats in `format`: a remote model says `safetensors` (as
`to_ls_json` does for any record that is not GGUF). Its context length is 0, unknown:
an upstream's `/v1/models` does not tell it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.errors import InvalidRequest, LmsError
from daemon.instance import Instance
from daemon.remote.router import looks_like_embedding, remote_record
from daemon.sdk import translate
from daemon.sdk.context import Context, NoModelMatching, as_dict, no_model, specified

REFERENCE_PREFIX = "remote:"  # a remote model's instanceReference: this and its key


@dataclass(frozen=True)
class RemoteModel:
    key: str
    upstreams: tuple[str, ...]  # in the listings' order: the first is its device

    @property
    def reference(self) -> str:
        return REFERENCE_PREFIX + self.key


def upstreams_of(ctx: Context, key: str) -> tuple[str, ...]:
    return tuple(u.name for u in ctx.upstreams.listed().get(key, []))


def _kind_matches(key: str, namespace: str) -> bool:
    return looks_like_embedding(key) == (namespace == "embedding")


async def remote_model(ctx: Context, name: str) -> RemoteModel | None:
    """`name` as a remote model of this namespace, if a request for it goes upstream first."""
    if not _kind_matches(name, ctx.namespace) or not await ctx.router.remote_first(name):
        return None
    return RemoteModel(name, upstreams_of(ctx, name))


async def remote_models(ctx: Context) -> list[RemoteModel]:
    found = [await remote_model(ctx, key) for key in sorted(ctx.upstreams.listed())]
    return [m for m in found if m is not None]


def model_info(key: str, upstreams: tuple[str, ...]) -> dict[str, Any]:
    """LM Studio's ModelInfo of a remote model, as `system.listDownloadedModels` lists it."""
    embedding = looks_like_embedding(key)
    record = remote_record(key, list(upstreams), embedding=embedding)
    return {
        **translate.model_info(record, key),
        "maxContextLength": 0,
        "deviceIdentifier": upstreams[0] if upstreams else None,
        "remote": list(upstreams),
    }


def instance_info(model: RemoteModel) -> dict[str, Any]:
    return {
        **model_info(model.key, model.upstreams),
        "identifier": model.key,
        "instanceReference": model.reference,
        "contextLength": 0,
    }


def load_config() -> dict[str, Any]:
    """No fields: nothing is loaded here, and the SDKs refuse a context length under 1."""
    return translate.kv_config({})


def with_remote(ctx: Context, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The downloaded models and the remote ones, as the HTTP listings merge them: a key
    also on disk keeps its one local entry, with its upstreams added (`remote`)."""
    remote = {
        key: tuple(u.name for u in ups) for key, ups in sorted(ctx.upstreams.listed().items())
    }
    for item in listed:
        if item["modelKey"] in remote:
            item["remote"] = list(remote.pop(item["modelKey"]))
    return listed + [model_info(key, names) for key, names in remote.items()]


async def find(ctx: Context, specifier: Any) -> tuple[str, Instance | RemoteModel | None]:
    """`specified`, with remote models: (the name to lease, the loaded instance or remote
    model it names if any). An empty query takes a remote model when nothing is loaded."""
    spec = as_dict(specifier, "specifier")
    ref = spec.get("instanceReference")
    is_reference = spec.get("type") == "instanceReference"
    if is_reference and isinstance(ref, str) and ref.startswith(REFERENCE_PREFIX):
        model = await remote_model(ctx, ref.removeprefix(REFERENCE_PREFIX))
        if model is None:
            raise no_model(ctx, {"instanceReference": ref})
        return model.key, model
    try:
        name, inst = specified(ctx, specifier)
    except NoModelMatching:
        remote = [] if is_reference else await remote_models(ctx)
        if not remote:
            raise
        return remote[0].key, remote[0]
    if inst is None:
        model = await remote_model(ctx, name)
        if model is not None:
            return name, model
    return name, inst


async def loaded(ctx: Context, specifier: Any) -> Instance | RemoteModel:
    _, target = await find(ctx, specifier)
    if target is None:
        raise no_model(ctx, as_dict(specifier, "specifier").get("query"))
    return target


def _served_by(model: str, upstreams: tuple[str, ...]) -> str:
    return f"{model} is a remote model, served by upstream {', '.join(upstreams) or '?'}"


def no_tokenizer(model: RemoteModel) -> InvalidRequest:
    return InvalidRequest(
        f"{_served_by(model.key, model.upstreams)}: its tokenizer and prompt template are "
        "upstream, so it cannot be tokenized or its tokens counted here",
        param="specifier",
    )


def not_loadable(ctx: Context, name: str) -> LmsError | None:
    """Why `name` cannot be loaded here, when it is not on disk but an upstream serves it."""
    upstreams = upstreams_of(ctx, name)
    if not upstreams or ctx.router.policy_of(name) == "local_only":
        return None
    if not _kind_matches(name, ctx.namespace):
        kind = "embedding" if looks_like_embedding(name) else "llm"
        return InvalidRequest(
            f"{_served_by(name, upstreams)} ({kind}): use it through the {kind} namespace",
            param="modelKey",
        )
    return InvalidRequest(
        f"{_served_by(name, upstreams)}: it is served there and cannot be loaded here; "
        "`model()` (getOrLoad) gives its handle",
        param="modelKey",
    )


def not_unloadable(ctx: Context, identifier: str) -> LmsError | None:
    upstreams = upstreams_of(ctx, identifier)
    if not upstreams:
        return None
    return InvalidRequest(
        f"{_served_by(identifier, upstreams)}: it is not loaded here, so it cannot be "
        "unloaded from here (unload it on the upstream, e.g. `lms --host HOST unload`)",
        param="identifier",
    )
