"""The load settings (threads, flash attention, KV pool and cache types, mmap/mlock,
seed, KV offload): checked alike by `lms load` (exit 2), the load API (400) and the
settings; defaults from the `default_*` settings (JIT loads too); the values reach the
engine's LoadSpec; the estimate follows the pool, the slots and the cache types. The
llama.cpp side (each value read back from the loaded context) is in
tests/integration/test_kv_pool.py."""

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from daemon.catalog import ModelRecord
from daemon.config import InvalidSetting, Settings
from daemon.engines.base import LoadSpec
from daemon.engines.settings import ignored_settings
from daemon.gguf import GgufInfo
from daemon.instance import LoadConfig
from daemon.memory import estimate
from daemon.server import Daemon
from lms.api.load_settings import settings_problem
from tests.inprocess import Client, admin_headers, running_daemon

SETTINGS = {
    "kv_pool": "per_slot",
    "flash_attention": "auto",
    "kv_cache_type_k": "q8_0",
    "kv_cache_type_v": "q4_0",
    "threads": 3,
    "use_mmap": False,
    "keep_model_in_memory": True,
    "seed": 42,
    "offload_kv_cache_to_gpu": False,
}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path, default_kv_cache_type_k="q4_0", default_threads=2) as d:
        yield d


@pytest.fixture
async def client(aiohttp_client: Any, daemon: Daemon) -> Client:
    return await aiohttp_client(daemon.app)  # type: ignore[no-any-return]


@pytest.fixture
def specs(daemon: Daemon) -> list[LoadSpec]:
    """Every LoadSpec the manager starts an engine with."""
    manager = daemon.core.manager
    real = manager._starter
    seen: list[LoadSpec] = []

    def recording(spec: LoadSpec, *args: Any, **kwargs: Any) -> Any:
        seen.append(spec)
        return real(spec, *args, **kwargs)

    manager._starter = recording  # type: ignore[assignment]
    return seen


async def load(client: Client, daemon: Daemon, **body: Any) -> tuple[int, Any]:
    response = await client.post(
        "/api/v1/models/load", json={"model": "echo", **body}, headers=admin_headers(daemon)
    )
    return response.status, await response.json()


async def test_each_setting_travels_from_the_api_to_the_engine(
    client: Client, daemon: Daemon, specs: list[LoadSpec]
) -> None:
    status, reply = await load(client, daemon, **SETTINGS)
    assert status == 200, reply
    (spec,) = specs
    assert (spec.kv_pool, spec.flash_attention) == ("per_slot", "auto")
    assert (spec.kv_cache_type_k, spec.kv_cache_type_v) == ("q8_0", "q4_0")
    assert (spec.n_threads, spec.use_mmap, spec.use_mlock) == (3, False, True)
    assert (spec.seed, spec.offload_kqv) == (42, False)
    assert reply["instance"]["loadSettings"] == SETTINGS


async def test_omitted_settings_take_the_defaults_also_for_jit_loads(
    client: Client, daemon: Daemon, specs: list[LoadSpec]
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    )
    assert response.status == 200, await response.text()
    (spec,) = specs
    assert (spec.kv_cache_type_k, spec.n_threads) == ("q4_0", 2)  # the daemon's defaults
    assert (spec.kv_pool, spec.flash_attention, spec.kv_cache_type_v) == ("shared", "on", "f16")
    assert (spec.use_mmap, spec.use_mlock, spec.seed, spec.offload_kqv) == (True, False, None, True)


async def test_lm_studio_s_boolean_flash_attention_is_understood(
    client: Client, daemon: Daemon, specs: list[LoadSpec]
) -> None:
    status, _ = await load(client, daemon, flash_attention=False)
    assert status == 200
    assert specs[0].flash_attention == "off"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kv_pool", "unified"),
        ("flash_attention", "sometimes"),
        ("flash_attention", 1),
        ("kv_cache_type_k", "q5_1"),
        ("kv_cache_type_v", "f32"),
        ("threads", 0),
        ("threads", "two"),
        ("use_mmap", "yes"),
        ("keep_model_in_memory", 1),
        ("seed", -5),
        ("seed", 2**40),
        ("offload_kv_cache_to_gpu", "no"),
    ],
)
async def test_bad_values_are_400_naming_the_field_and_load_nothing(
    client: Client, daemon: Daemon, field: str, value: Any
) -> None:
    status, reply = await load(client, daemon, **{field: value})
    assert status == 400, reply
    assert reply["error"]["param"] == field
    assert daemon.core.manager.instances() == []


async def test_a_quantized_v_cache_without_flash_attention_is_400(
    client: Client, daemon: Daemon
) -> None:
    status, reply = await load(client, daemon, kv_cache_type_v="q8_0", flash_attention="off")
    assert status == 400 and reply["error"]["param"] == "kv_cache_type_v"


async def test_the_estimate_reply_states_each_part(client: Client, daemon: Daemon) -> None:
    status, shared = await load(client, daemon, estimate_only=True, parallel=4)
    assert status == 200
    status, per_slot = await load(
        client, daemon, estimate_only=True, parallel=4, kv_pool="per_slot"
    )
    parts = ("weights_bytes", "kv_cache_bytes", "compute_bytes", "runtime_bytes")
    for reply in (shared, per_slot):
        estimate = reply["estimate"]
        assert estimate["total_bytes"] == sum(estimate[p] for p in parts)
    assert (shared["kv_pool"], shared["kv_cells"], shared["parallel"]) == ("shared", 1024, 4)
    assert per_slot["kv_cells"] == 4 * 1024
    assert per_slot["estimate"]["kv_cache_bytes"] == 4 * shared["estimate"]["kv_cache_bytes"]


def test_the_same_rules_hold_everywhere() -> None:
    assert settings_problem(kv_pool="shared", flash_attention="auto", threads=4, seed=0) is None
    assert settings_problem(kv_cache_type_v="q4_0", flash_attention="off") == (
        "kv_cache_type_v",
        "a quantized V cache needs flash attention (on or auto)",
    )
    with pytest.raises(InvalidSetting, match="default_kv_cache_type_k"):
        Settings(default_kv_cache_type_k="q2_k")
    with pytest.raises(InvalidSetting, match="default_threads"):
        Settings(default_threads=-1)
    Settings(default_seed=-1, default_threads=0)  # random seed, one thread per core


@pytest.mark.parametrize(
    "args",
    [
        ("--kv-pool", "unified"),
        ("--flash-attention", "maybe"),
        ("--kv-cache-type-k", "q2_k"),
        ("--kv-cache-type-v", "q8_0", "--flash-attention", "off"),
        ("--threads", "0"),
        ("--seed", "-1"),
    ],
)
def test_lms_load_refuses_bad_values_with_exit_2_before_asking_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    from lms.cli.main import app

    monkeypatch.setenv("LMS_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["load", "some-model", *args])
    assert result.exit_code == 2, result.output


def _record(**gguf: Any) -> ModelRecord:
    # Only what the estimate reads of a GGUF header.
    shape = {"key_length": None, "value_length": None, **gguf}
    info: GgufInfo = SimpleNamespace(**shape)  # type: ignore[assignment]
    return ModelRecord(
        key="m", path="p/m.gguf", abs_path=Path("/m.gguf"), models_dir=Path("/"),
        publisher="p", repo="m", format="gguf", type="llm", arch="llama",
        quantization="Q4_0", max_context_length=32768, size_bytes=10**9,
        params_string=None, capabilities=(), display_name="m", files=(), gguf=info,
    )  # fmt: skip


def test_the_estimate_counts_the_pool_the_slots_and_the_cache_types() -> None:
    record = _record(
        block_count=32, embedding_length=4096, head_count=32,
        head_count_kv=8, vocab_size=32000,
    )  # fmt: skip

    def parts(**config: Any) -> Any:
        return estimate(record, LoadConfig(**{"context_length": 32768, "gpu_ratio": 0.0,
                                              "parallel": 4, **config}))  # fmt: skip

    shared = parts()
    # An 8B-shaped model: 32 layers x 8 KV heads x 128 x (K + V) x 2 bytes x 32k = 4 GiB.
    assert shared.kv_cache_bytes == 32 * 8 * 128 * 2 * 2 * 32768 == 4 * 2**30
    assert parts(kv_pool="per_slot").kv_cache_bytes == 4 * shared.kv_cache_bytes
    assert parts(parallel=1).kv_cache_bytes == shared.kv_cache_bytes
    assert parts(parallel=16).compute_bytes > shared.compute_bytes  # a logits row per slot
    q8 = parts(kv_cache_type_k="q8_0", kv_cache_type_v="q8_0").kv_cache_bytes
    assert q8 == shared.kv_cache_bytes * 34 // 64
    assert shared.total_bytes == (
        shared.weights_bytes + shared.kv_cache_bytes + shared.compute_bytes + shared.runtime_bytes
    )


def test_an_engine_names_the_settings_it_leaves_aside() -> None:
    spec = LoadSpec("m", "mlx", n_threads=4, flash_attention="off", seed=None)
    assert ignored_settings(spec, frozenset()) == ["flash_attention", "n_threads"]
    assert ignored_settings(spec, frozenset({"n_threads", "flash_attention"})) == []


def test_wrong_types_are_problems_not_crashes() -> None:
    # What a hand-edited restore file or defaults file may hold.
    assert settings_problem(threads="2")[0] == "threads"  # type: ignore[arg-type,index]
    assert settings_problem(seed=1.5)[0] == "seed"  # type: ignore[arg-type,index]
    assert settings_problem(use_mmap="yes")[0] == "use_mmap"  # type: ignore[arg-type,index]
    assert settings_problem(kv_pool=["shared"])[0] == "kv_pool"  # type: ignore[arg-type,index]


async def test_a_restart_loads_again_with_the_same_settings(daemon: Daemon) -> None:
    from daemon.restore import restore

    manager = daemon.core.manager
    await restore(manager, [{"model": "echo", "kv_pool": "per_slot", "seed": 5, "threads": 1}])
    (saved,) = manager.manual_loads()
    assert (saved["kv_pool"], saved["seed"], saved["threads"]) == ("per_slot", 5, 1)
    await manager.unload_all()
    await restore(manager, [saved])  # what the state file gives back after a restart
    (instance,) = manager.instances()
    assert (instance.config.kv_pool, instance.config.seed) == ("per_slot", 5)
