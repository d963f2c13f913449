"""Routes and shapes of the remote upstreams (`lms upstream`, docs/scale-out.md).

An upstream's API key goes in (`UpstreamRequest.api_key`) and never comes out: listings
say only `api_key_set`."""

from typing import Literal, NotRequired, TypedDict

UPSTREAMS_PATH = "/api/admin/upstreams"
POLICY_PATH = "/api/admin/upstreams/policy"

Policy = Literal["local_only", "prefer_local", "prefer_remote", "spill_over"]
POLICIES: tuple[Policy, ...] = ("local_only", "prefer_local", "prefer_remote", "spill_over")


class UpstreamRequest(TypedDict):
    """`POST /api/admin/upstreams` (admin): add one, or replace it with `replace`."""

    name: str
    base_url: str
    api_key: NotRequired[str]
    models: NotRequired[list[str]]  # upstream ids to expose, "id=our-key" to rename; all if none
    priority: NotRequired[int]
    connect_timeout: NotRequired[float]
    first_byte_timeout: NotRequired[float]
    idle_timeout: NotRequired[float]
    max_in_flight: NotRequired[int]
    replace: NotRequired[bool]


class UpstreamStatus(TypedDict):
    name: str
    base_url: str
    api_key_set: bool
    models: dict[str, str]
    priority: int
    connect_timeout: float
    first_byte_timeout: float
    idle_timeout: float
    max_in_flight: int
    reachable: bool | None  # None: not checked yet
    circuit: Literal["closed", "open", "half_open"]
    in_flight: int
    last_error: str | None
    served_models: list[str]  # the keys it serves now


class UpstreamListing(TypedDict):
    upstreams: list[UpstreamStatus]
    policies: dict[str, Policy]


class PolicyRequest(TypedDict):
    """`POST /api/admin/upstreams/policy`: a model's routing policy (null: the default)."""

    model: str
    policy: Policy | None
