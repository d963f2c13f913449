"""Routes and shapes of the lifecycle endpoints: load, unload, loaded instances (`lms ps`)
and the model match behind `lms load`."""

from typing import Literal, NotRequired, Required, TypedDict

from lms.api.models import ModelInfo, ModelKind

LOAD_PATH = "/api/v1/models/load"
UNLOAD_PATH = "/api/v1/models/unload"
INSTANCES_PATH = "/api/admin/instances"
MATCH_PATH = "/api/admin/models/match"

# "off", "max", or the share of layers on the GPU (0..1).
GpuSetting = Literal["off", "max"] | float
InstanceState = Literal["loading", "loaded", "draining", "unloaded", "failed"]
ProcessingStatus = Literal["loading", "generating", "processingPrompt", "idle"]


class LoadRequest(TypedDict, total=False):
    """`POST /api/v1/models/load`. Absent fields take the daemon's defaults."""

    model: Required[str]  # a model key, alias, key@quant or path
    identifier: str  # the instance's name in the API (default: the model key)
    ttl: float | str  # idle seconds before unloading, or a duration such as "5m"
    context_length: int
    gpu: GpuSetting
    parallel: int
    # Engine settings (docs/engines.md; values in lms.api.load_settings).
    kv_pool: str  # "shared" (one KV pool for the slots) or "per_slot"
    flash_attention: bool | str  # true/false (LM Studio) or "on", "off", "auto"
    kv_cache_type_k: str  # "f16", "q8_0" or "q4_0"
    kv_cache_type_v: str
    threads: int
    use_mmap: bool
    keep_model_in_memory: bool  # mlock
    seed: int
    offload_kv_cache_to_gpu: bool
    estimate_only: bool  # answer an EstimateReply; load nothing
    force: bool  # load even when the memory guardrail says no


class InstanceInfo(ModelInfo):
    """One loaded instance: LM Studio's `lms ps --json` item plus our extras
    (`daemon.http.lifecycle_routes.instance_json`). Its `modelKey` is the catalog key."""

    identifier: str
    # A unique string per loaded instance (LM Studio's SDK requires it); a model unloaded
    # and loaded again gets a new one. Always sent by this daemon.
    instanceReference: NotRequired[str]
    state: InstanceState
    status: ProcessingStatus
    origin: Literal["jit", "manual"]
    ttlMs: int | None  # None: never unloaded for idleness
    ttlRemainingMs: int | None  # None exactly when ttlMs is None
    lastUsedTime: int  # ms epoch; now while busy
    contextLength: int
    parallel: int
    inFlight: int
    queued: int
    memoryBytes: int
    loadTimeSeconds: float
    pid: int | None  # the worker's; None when it runs in the daemon (or is gone)
    device: Literal["GPU", "CPU"]
    gpuLayers: int
    # The engine settings it was loaded with (the load API's names), and those of them
    # its engine does not apply (MLX: llama.cpp's).
    loadSettings: NotRequired[dict[str, object]]
    ignoredSettings: NotRequired[list[str]]


class LoadReply(TypedDict):
    """`POST /api/v1/models/load` (without estimate_only)."""

    type: ModelKind
    instance_id: str
    load_time_seconds: float
    status: Literal["loaded"]
    already_loaded: bool  # an instance with this identifier was loaded already
    instance: InstanceInfo


class Estimate(TypedDict):
    weights_bytes: int
    kv_cache_bytes: int  # the KV pool (shared) or every slot's (per_slot)
    compute_bytes: int  # compute buffers: logits per slot, one batch's activations
    runtime_bytes: int  # the worker process itself
    overhead_bytes: int  # compute + runtime
    total_bytes: int


class EstimateReply(TypedDict):
    """`POST /api/v1/models/load` with `"estimate_only": true`."""

    model: str  # the resolved model key
    context_length: int
    gpu_ratio: float | None  # None: the engine's choice
    parallel: int
    kv_pool: str
    kv_cells: int  # KV cells allocated: context_length, or x parallel per slot
    kv_cache_type_k: str
    kv_cache_type_v: str
    estimate: Estimate
    available_bytes: int
    allowed_bytes: int
    guardrail: str  # off, relaxed, balanced or strict
    passes_guardrails: bool


class UnloadRequest(TypedDict, total=False):
    """`POST /api/v1/models/unload`: one instance, or `"all": true`."""

    instance_id: str
    all: bool


class UnloadReply(TypedDict):
    """`POST /api/v1/models/unload` with `instance_id`."""

    instance_id: str


class UnloadAllReply(TypedDict):
    """`POST /api/v1/models/unload` with `"all": true`: the identifiers unloaded."""

    unloaded: list[str]


class MatchReply(TypedDict):
    """`GET /api/admin/models/match?q=<name>[&exact=1]`: the usable model the name
    resolves to, else (exact None) the fuzzy candidates. With `exact=1` the name must be
    a model's path and candidates is always empty. `modelKey`s are public ids (unique)."""

    exact: ModelInfo | None
    candidates: list[ModelInfo]
