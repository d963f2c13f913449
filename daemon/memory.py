"""Memory estimates for a load, and the guardrail that compares them with free memory.

estimate = weights (the model files) + KV cache for the context + overhead (compute
buffers, logits, the worker process itself). Deliberately simple and a little pessimistic.
"""

from dataclasses import dataclass
from typing import Literal

from daemon.catalog import ModelRecord

GuardrailMode = Literal["off", "relaxed", "balanced", "strict"]
GUARDRAIL_MODES: tuple[GuardrailMode, ...] = ("off", "relaxed", "balanced", "strict")
# Share of the machine's available memory one load may take, per mode.
GUARDRAIL_SHARE: dict[GuardrailMode, float] = {
    "off": float("inf"),
    "relaxed": 1.0,
    "balanced": 0.9,
    "strict": 0.7,
}
KV_BYTES_PER_VALUE = 2  # llama.cpp's default f16 KV cache
WORKER_BASE_BYTES = 80 * 1024 * 1024  # Python + llama.cpp runtime, measured ~70 MB
BATCH_TOKENS = 512


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


def estimate(record: ModelRecord, context_length: int) -> MemoryEstimate:
    info = record.gguf
    kv = 0
    overhead = WORKER_BASE_BYTES
    if info is not None and info.block_count and info.embedding_length:
        heads = info.head_count or 1
        kv_heads = info.head_count_kv or heads
        head_dim_k = info.key_length or info.embedding_length // heads
        head_dim_v = info.value_length or info.embedding_length // heads
        per_token = info.block_count * kv_heads * (head_dim_k + head_dim_v) * KV_BYTES_PER_VALUE
        kv = per_token * context_length
        # Logits for one batch plus activations: scale with vocabulary and width.
        overhead += (info.vocab_size or 32000) * BATCH_TOKENS * 4 // 4
        overhead += info.embedding_length * BATCH_TOKENS * 4 * 8
    return MemoryEstimate(record.size_bytes, kv, overhead)


def allowed_bytes(available_bytes: int, mode: GuardrailMode) -> float:
    return available_bytes * GUARDRAIL_SHARE[mode]
