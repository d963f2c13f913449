"""The load settings a client may choose, and their allowed values (shared by `lms load`,
the load API and the daemon's settings, so all three refuse the same values)."""

from typing import Literal

KvPool = Literal["shared", "per_slot"]
FlashAttention = Literal["on", "off", "auto"]
KvCacheType = Literal["f16", "q8_0", "q4_0"]

KV_POOLS: tuple[KvPool, ...] = ("shared", "per_slot")
FLASH_ATTENTION: tuple[FlashAttention, ...] = ("on", "off", "auto")
KV_CACHE_TYPES: tuple[KvCacheType, ...] = ("f16", "q8_0", "q4_0")
# Bytes per stored value: ggml's q8_0 packs 32 values in 34 bytes, q4_0 in 18.
KV_CACHE_TYPE_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
MAX_THREADS = 1024


def settings_problem(
    *,
    kv_pool: str | None = None,
    flash_attention: str | None = None,
    kv_cache_type_k: str | None = None,
    kv_cache_type_v: str | None = None,
    threads: int | None = None,
    seed: int | None = None,
    **switches: bool | None,
) -> tuple[str, str] | None:
    """(the field, what is wrong) for the first bad value, else None; `switches` are the
    on/off settings by name. A quantized V cache needs flash attention (llama.cpp refuses
    the context otherwise)."""
    choices: list[tuple[str, str | None, tuple[str, ...]]] = [
        ("kv_pool", kv_pool, KV_POOLS),
        ("flash_attention", flash_attention, FLASH_ATTENTION),
        ("kv_cache_type_k", kv_cache_type_k, KV_CACHE_TYPES),
        ("kv_cache_type_v", kv_cache_type_v, KV_CACHE_TYPES),
    ]
    for name, value, allowed in choices:
        if value is not None and value not in allowed:
            return name, f"{name} must be one of {', '.join(allowed)} (got {value!r})"
    if threads is not None and not (_whole(threads) and 1 <= threads <= MAX_THREADS):
        return "threads", f"threads must be a whole number between 1 and {MAX_THREADS}"
    if seed is not None and not (_whole(seed) and 0 <= seed < 2**32):
        return "seed", "seed must be a whole number between 0 and 4294967295"
    for name, flag in switches.items():
        if flag is not None and not isinstance(flag, bool):
            return name, f"{name} must be true or false"
    if kv_cache_type_v not in (None, "f16") and flash_attention == "off":
        return "kv_cache_type_v", "a quantized V cache needs flash attention (on or auto)"
    return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
