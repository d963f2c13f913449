"""Memory estimates for a load, and the guardrail that compares them with free memory.

estimate = weights (the model files, mapped and read in full; a vision model's projector
file too, which llama.cpp reads into memory) + the KV cache that the
load allocates (one pool of context_length cells shared by the slots, or that many per
slot; K and V at their cache types) + compute buffers (a logits row per slot and the
activations of one batch) + the worker process itself (Python and the libraries).
Checked against a real worker's resident memory (tests/integration/test_memory_estimate.py).
"""

from dataclasses import dataclass
from typing import Literal

from daemon.catalog import ModelRecord
from daemon.instance import LoadConfig
from lms.api.load_settings import KV_CACHE_TYPE_BYTES

GuardrailMode = Literal["off", "relaxed", "balanced", "strict"]
GUARDRAIL_MODES: tuple[GuardrailMode, ...] = ("off", "relaxed", "balanced", "strict")
# Share of the machine's available memory one load may take, per mode.
GUARDRAIL_SHARE: dict[GuardrailMode, float] = {
    "off": float("inf"),
    "relaxed": 1.0,
    "balanced": 0.9,
    "strict": 0.7,
}
# A worker with llama.cpp's bindings imported and no model: 26.7 MB measured (RSS), 29.3
# once a chat template has been rendered (Jinja).
WORKER_BASE_BYTES = 27 * 1024 * 1024
BATCH_TOKENS = 512  # the engine's batch (llama_cpp_impl.N_BATCH)
# Activations of one batch that stay resident, in n_embd-wide float rows per token:
# 16 matches the measured compute buffers of SmolLM2 with flash attention.
ACTIVATION_ROWS = 16
FLOAT_BYTES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int = 0  # compute buffers: logits per slot, a batch's activations
    runtime_bytes: int = 0  # the worker process without a model

    @property
    def overhead_bytes(self) -> int:
        return self.compute_bytes + self.runtime_bytes

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


def kv_cells(config: LoadConfig) -> int:
    """KV cells the load allocates: one shared pool, or a full context per slot."""
    slots = 1 if config.kv_pool == "shared" else config.parallel
    return config.context_length * slots


def estimate(record: ModelRecord, config: LoadConfig) -> MemoryEstimate:
    info = record.gguf
    if info is None or not info.block_count or not info.embedding_length:
        return MemoryEstimate(_weights(record), 0, 0, WORKER_BASE_BYTES)
    heads = info.head_count or 1
    kv_heads = info.head_count_kv or heads
    head_dim_k = info.key_length or info.embedding_length // heads
    head_dim_v = info.value_length or info.embedding_length // heads
    per_cell = (
        info.block_count
        * kv_heads
        * (
            head_dim_k * KV_CACHE_TYPE_BYTES[config.kv_cache_type_k]
            + head_dim_v * KV_CACHE_TYPE_BYTES[config.kv_cache_type_v]
        )
    )
    cells = kv_cells(config)
    slots = 1 if record.type == "embeddings" else config.parallel
    compute = (info.vocab_size or 32000) * FLOAT_BYTES * slots  # a logits row per slot
    compute += info.embedding_length * BATCH_TOKENS * FLOAT_BYTES * ACTIVATION_ROWS
    if config.flash_attention == "off":  # the attention scores of a batch over the cells
        compute += config.context_length * BATCH_TOKENS * heads * FLOAT_BYTES
    return MemoryEstimate(_weights(record), int(per_cell * cells), compute, WORKER_BASE_BYTES)


def _weights(record: ModelRecord) -> int:
    """The model's files, and a vision model's projector."""
    return record.size_bytes + (record.mmproj_bytes if record.type == "vlm" else 0)


def allowed_bytes(available_bytes: int, mode: GuardrailMode) -> float:
    return available_bytes * GUARDRAIL_SHARE[mode]
