"""Remote models in the listings: each key an upstream serves, in each listing's shape,
marked remote with the upstreams serving it. A key also on disk here keeps its one local
entry, with the upstreams added (`remote`), never a second entry."""

from typing import Any

from daemon.remote.pool import UpstreamPool
from daemon.remote.router import looks_like_embedding
from lms.api.models import ListedModel


def remote_models(pool: UpstreamPool) -> dict[str, list[str]]:
    """Every remote model key, and the names of the upstreams serving it (in order)."""
    return {key: [u.name for u in ups] for key, ups in sorted(pool.listed().items())}


def _type(key: str) -> str:
    return "embedding" if looks_like_embedding(key) else "llm"


def openai_item(key: str, upstreams: list[str]) -> dict[str, object]:
    return {"id": key, "object": "model", "created": 0, "owned_by": upstreams[0]}


def v0_item(key: str, upstreams: list[str]) -> dict[str, object]:
    return {
        "id": key,
        "object": "model",
        "type": "embeddings" if _type(key) == "embedding" else "llm",
        "publisher": upstreams[0],
        "arch": None,
        "compatibility_type": "remote",
        "quantization": None,
        "state": "loaded",  # served now, nothing to load here
        "max_context_length": None,
        "capabilities": ["tool_use"],
        "deviceIdentifier": upstreams[0],
        "remote": upstreams,
    }


def rest_v1_item(key: str, upstreams: list[str]) -> dict[str, Any]:
    return {
        "type": _type(key),
        "publisher": upstreams[0],
        "key": key,
        "display_name": key,
        "architecture": None,
        "quantization": None,
        "size_bytes": 0,
        "params_string": None,
        "loaded_instances": [],
        "max_context_length": None,
        "format": "remote",
        "device_identifier": upstreams[0],
        "remote": upstreams,
    }


def ls_item(key: str, upstreams: list[str]) -> ListedModel:
    return {
        "type": "embedding" if _type(key) == "embedding" else "llm",
        "modelKey": key,
        "format": "remote",
        "displayName": key,
        "publisher": upstreams[0],
        "path": f"remote/{upstreams[0]}/{key}",
        "sizeBytes": 0,
        "indexedModelIdentifier": f"remote/{upstreams[0]}/{key}",
        "deviceIdentifier": upstreams[0],
        "maxContextLength": None,
        "loaded": 0,
        "remote": upstreams,
    }
