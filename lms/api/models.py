"""Routes and shapes of the model catalog endpoints (`lms ls`, `lms import`)."""

from typing import Literal, NotRequired, TypedDict

V0_MODELS_PATH = "/api/v0/models"
V1_MODELS_PATH = "/v1/models"
ADMIN_MODELS_PATH = "/api/admin/models"
ADMIN_IMPORT_PATH = "/api/admin/models/import"

ModelKind = Literal["llm", "embedding"]
ImportMode = Literal["move", "copy", "hard-link", "symbolic-link"]


class Quantization(TypedDict):
    name: str  # as the file says it: "Q4_K_M", "4bit"
    bits: int | None  # the width the name states; None when it states none


class ModelInfo(TypedDict):
    """A model on disk, as LM Studio's `lms ls --json` prints it (`daemon.catalog.to_ls_json`).

    Also the head of every loaded instance (`lifecycle.InstanceInfo`) and of every match."""

    type: ModelKind
    modelKey: str
    # MLX model directories report "safetensors"; a model only an upstream serves "remote".
    format: Literal["gguf", "safetensors", "remote"]
    displayName: str
    publisher: str
    path: str  # relative to its models directory, "/"-separated
    sizeBytes: int
    indexedModelIdentifier: str  # the same as path
    deviceIdentifier: str | None  # None: this machine; else the upstream serving it
    paramsString: NotRequired[str]  # "7B"; absent when unknown
    architecture: NotRequired[str]  # "llama", "qwen2"; absent when unknown
    quantization: NotRequired[Quantization]  # absent when unknown
    maxContextLength: int | None
    vision: NotRequired[bool]  # LLMs only
    trainedForToolUse: NotRequired[bool]  # LLMs only


class ListedModel(ModelInfo):
    """One item of `GET /api/admin/models` (what `lms ls --json` prints)."""

    loaded: int  # how many instances of it are loaded
    remote: NotRequired[list[str]]  # the upstreams that also (or only) serve it
    error: NotRequired[str]  # present when the file is unusable, and why


class ModelsListing(TypedDict):
    """`GET /api/admin/models`: every model found, usable or not."""

    models: list[ListedModel]
    models_dirs: list[str]


class ImportRequest(TypedDict):
    """`POST /api/admin/models/import` (Unix socket only: it moves files on this machine)."""

    path: str
    mode: ImportMode
    user_repo: str | None
    dry_run: bool


class ImportReply(TypedDict):
    source: str
    target: str
    mode: ImportMode
    user_repo: str
    dry_run: bool
    warnings: list[str]
