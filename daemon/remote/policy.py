"""Where a request for a model goes: the local instance, an upstream, or one then the
other. Pure decisions; the router (router.py) acts on them.

    local_only     never an upstream (a model only upstream is then not found)
    prefer_local   local when the model is on disk; an upstream when it is not, or when
                   the local instance cannot serve (busy, out of memory, failed to load)
    prefer_remote  an upstream while one is available; else local
    spill_over     local; an upstream only when the local instance's queue is full
"""

from typing import Literal, get_args

from daemon.errors import (
    InsufficientMemory,
    LmsError,
    LoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    ServerBusy,
    UpstreamFailed,
    UpstreamUnavailable,
)

Policy = Literal["local_only", "prefer_local", "prefer_remote", "spill_over"]
POLICIES: tuple[Policy, ...] = get_args(Policy)
DEFAULT_POLICY: Policy = "prefer_local"
Backend = Literal["local", "remote"]


def route_order(policy: Policy, *, local: bool, remote: bool) -> list[Backend]:
    """The backends to try, in order: `local` says the model is on disk here, `remote`
    that an upstream lists it (and one is available)."""
    if policy == "local_only":
        order: list[Backend] = ["local"]
    elif policy == "prefer_remote":
        order = ["remote", "local"]
    else:
        order = ["local", "remote"]
    have = {"local": local, "remote": remote}
    return [b for b in order if have[b]]


def falls_through(policy: Policy, tried: Backend, exc: LmsError) -> bool:
    """Whether a failure of the `tried` backend, before the request started, passes the
    request to the next backend in the order."""
    if policy == "spill_over":
        return tried == "local" and isinstance(exc, ServerBusy)
    if tried == "remote":
        return isinstance(exc, UpstreamUnavailable | UpstreamFailed)
    return isinstance(
        exc, ServerBusy | InsufficientMemory | LoadFailed | ModelNotFound | ModelNotLoaded
    )
