"""Routes and shapes of the per-model load defaults (`lms model-defaults`): the load
settings every load of a model starts from, saved in the daemon's config folder."""

from typing import Any, Required, TypedDict

MODEL_DEFAULTS_PATH = "/api/admin/model-defaults"  # GET (?model=NAME for one), POST


class ModelDefaultsEntry(TypedDict):
    """One model's defaults."""

    model: str  # the model key (public id)
    path: str  # the model's path in the models folder: what the defaults are saved under
    # Load settings by the load API's names (`POST /api/v1/models/load`): context_length,
    # gpu, parallel, ttl and every other load setting the daemon takes.
    defaults: dict[str, Any]


class ModelDefaultsListing(TypedDict):
    """`GET /api/admin/model-defaults`: every model with defaults, and the settings."""

    settings: list[str]  # every load setting that may be saved, by its API name
    models: list[ModelDefaultsEntry]


class ModelDefaultsRequest(TypedDict, total=False):
    """`POST /api/admin/model-defaults`: change one model's defaults. `reset` goes first
    (true: all of them; else the settings named), then `set` (a null value removes a
    setting). Checked as a load of the model would be: a bad value is a 400 and nothing
    is saved."""

    model: Required[str]  # a model key, alias, key@quant or path
    set: dict[str, Any]
    reset: bool | list[str]
