"""The engine settings flags of `lms load` (docs/cli.md), checked before any request:
a bad value is a usage error (exit 2), daemon or not."""

from typing import Annotated

import typer

from lms.api.lifecycle import LoadRequest
from lms.api.load_settings import (
    FLASH_ATTENTION,
    KV_CACHE_TYPES,
    KV_POOLS,
    MAX_THREADS,
    settings_problem,
)

KvPoolOption = Annotated[
    str | None,
    typer.Option(
        "--kv-pool",
        help=f"KV cache of the slots: {' or '.join(KV_POOLS)} "
        "(shared: one pool of context-length cells; per_slot: parallel x the memory).",
    ),
]
FlashAttentionOption = Annotated[
    str | None,
    typer.Option("--flash-attention", help=f"Flash attention: {', '.join(FLASH_ATTENTION)}."),
]
KvTypeKOption = Annotated[
    str | None,
    typer.Option("--kv-cache-type-k", help=f"KV cache K type: {', '.join(KV_CACHE_TYPES)}."),
]
KvTypeVOption = Annotated[
    str | None,
    typer.Option(
        "--kv-cache-type-v",
        help=f"KV cache V type: {', '.join(KV_CACHE_TYPES)} (quantized needs flash attention).",
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option("--threads", min=1, max=MAX_THREADS, help="CPU threads (default: one per core)."),
]
MmapOption = Annotated[
    bool | None,
    typer.Option("--mmap/--no-mmap", help="Map the model file instead of reading it in."),
]
MlockOption = Annotated[
    bool | None,
    typer.Option(
        "--keep-in-memory/--no-keep-in-memory",
        help="Lock the model's weights in RAM (mlock): never swapped out.",
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option("--seed", min=0, max=2**32 - 1, help="Seed for requests that bring none."),
]
OffloadKvOption = Annotated[
    bool | None,
    typer.Option(
        "--offload-kv-cache/--no-offload-kv-cache",
        help="Put the KV cache on the GPU with the offloaded layers.",
    ),
]


# `lms load`'s flag names whose load-API name differs (lms model-defaults takes either).
API_NAMES = {
    "mmap": "use_mmap",
    "keep_in_memory": "keep_model_in_memory",
    "offload_kv_cache": "offload_kv_cache_to_gpu",
}


def add_engine_settings(
    body: LoadRequest,
    *,
    kv_pool: str | None,
    flash_attention: str | None,
    kv_cache_type_k: str | None,
    kv_cache_type_v: str | None,
    threads: int | None,
    use_mmap: bool | None,
    keep_model_in_memory: bool | None,
    seed: int | None,
    offload_kv_cache_to_gpu: bool | None,
) -> None:
    """Puts the flags given into the load request; BadParameter (exit 2) if one is wrong."""
    problem = settings_problem(
        kv_pool=kv_pool,
        flash_attention=flash_attention,
        kv_cache_type_k=kv_cache_type_k,
        kv_cache_type_v=kv_cache_type_v,
        threads=threads,
        seed=seed,
    )
    if problem is not None:
        raise typer.BadParameter(problem[1], param_hint="--" + problem[0].replace("_", "-"))
    if kv_pool is not None:
        body["kv_pool"] = kv_pool
    if flash_attention is not None:
        body["flash_attention"] = flash_attention
    if kv_cache_type_k is not None:
        body["kv_cache_type_k"] = kv_cache_type_k
    if kv_cache_type_v is not None:
        body["kv_cache_type_v"] = kv_cache_type_v
    if threads is not None:
        body["threads"] = threads
    if use_mmap is not None:
        body["use_mmap"] = use_mmap
    if keep_model_in_memory is not None:
        body["keep_model_in_memory"] = keep_model_in_memory
    if seed is not None:
        body["seed"] = seed
    if offload_kv_cache_to_gpu is not None:
        body["offload_kv_cache_to_gpu"] = offload_kv_cache_to_gpu
