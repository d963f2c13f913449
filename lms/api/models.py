"""Routes and bodies of the model catalog endpoints."""

from typing import Literal, TypedDict

V0_MODELS_PATH = "/api/v0/models"
V1_MODELS_PATH = "/v1/models"
ADMIN_MODELS_PATH = "/api/admin/models"
ADMIN_IMPORT_PATH = "/api/admin/models/import"

ImportMode = Literal["move", "copy", "hard-link", "symbolic-link"]


class ImportRequest(TypedDict):
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
