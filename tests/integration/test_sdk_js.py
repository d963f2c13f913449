"""LM Studio's JavaScript SDK (`@lmstudio/sdk`, pinned in tests/js/package.json and its
lock), unmodified, run by the machine's Node.js against the real daemon with SmolLM2 and
the MiniLM fixture: list, load, respond streaming, embed, unload (tests/js/sdk_smoke.mjs).
The SDK comes from `npm ci` in tests/js (scripts/setup.sh, or this test when missing)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import minilm
from tests.integration.conftest import RunningDaemon

pytestmark = [pytest.mark.integration, pytest.mark.model]

JS = Path(__file__).resolve().parents[1] / "js"
MODEL = "smollm2-135m-instruct"
EMBEDDER = "text-embedding-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (the JS SDK test needs node 20 and npm)")
    if not (JS / "node_modules" / "@lmstudio" / "sdk" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install @lmstudio/sdk (tests/js)")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed in {JS}:\n{done.stderr[-2000:]}"
    return node


def test_js_sdk_lists_loads_streams_and_embeds(node: str, daemon: RunningDaemon) -> None:
    embedder = EMBEDDER if minilm.unavailable_reason() is None else ""
    base_url = daemon.url.replace("http://", "ws://")
    done = subprocess.run(
        [node, "sdk_smoke.mjs", base_url, MODEL, embedder],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr[-3000:]}"
    # The SDK checks every message against its schemas and warns about any that differ.
    assert "communication warning" not in done.stderr.lower(), done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert MODEL in facts["downloaded"]
    assert facts["loadedIdentifier"] == "js-llm" and "js-llm" in facts["loaded"]
    assert facts["fragments"] >= 1 and isinstance(facts["content"], str)
    assert facts["stopReason"] in ("eosFound", "maxPredictedTokensReached")
    assert 1 <= facts["predictedTokens"] <= 8
    assert "js-llm" not in facts["afterUnload"]
    if embedder:
        assert facts["embeddingLength"] == 384
