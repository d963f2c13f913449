"""With the real daemon, CLI and SmolLM2: llama.cpp's loading progress reaches `lms load`,
and a model's per-model defaults are where `lms load`, the load API and a JIT load from
a chat request start."""

from collections.abc import Iterator

import pytest

from tests.support import DaemonFolders, LmsRunner, link_smollm2, post_json

pytestmark = [pytest.mark.integration, pytest.mark.model]

A = "smollm2-135m-instruct"


@pytest.fixture
def server(folders: DaemonFolders, lms: LmsRunner, free_port: int) -> Iterator[str]:
    models = folders.root / "models"
    link_smollm2(models)
    folders.extra_env.update({"LMS_MODELS_DIRS": str(models), "LMS_DEFAULT_CONTEXT_LENGTH": "1024"})
    lms("server", "start", "--port", str(free_port), check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def instance(lms: LmsRunner) -> dict[str, object]:
    (only,) = lms.json("ps")
    return only  # type: ignore[no-any-return]


def test_lms_load_shows_llama_cpp_s_loading_progress(server: str, lms: LmsRunner) -> None:
    result = lms("load", A, check=True)  # stderr is not a terminal: plain lines
    shown = [
        int(line.rsplit(" ", 1)[1].rstrip("%"))
        for line in result.stderr.splitlines()
        if line.startswith(f"Loading {A}: ")
    ]
    assert shown[-1] == 100 and shown == sorted(shown)
    assert len(shown) >= 3, f"steps between the first and the last: {result.stderr}"
    assert "Model loaded successfully" in result.stderr
    result = lms("load", A, "--json", check=True)
    assert "Loading" not in result.stderr, "--json prints no progress"


def test_per_model_defaults_reach_cli_api_and_jit_loads(
    server: str, lms: LmsRunner, folders: DaemonFolders
) -> None:
    lms("model-defaults", "set", A, "--context-length", "2048", "--parallel", "2", check=True)
    refused = lms("model-defaults", "set", A, "--context-length", "99999999")
    assert refused.returncode == 2, refused.stderr
    assert lms.json("model-defaults", "get", A)["defaults"] == {
        "context_length": 2048,
        "parallel": 2,
    }
    assert (folders.root / "config" / "model-defaults.json").is_file()  # LMS_HOME/config

    lms("load", A, check=True)  # the CLI
    inst = instance(lms)
    assert (inst["contextLength"], inst["parallel"], inst["origin"]) == (2048, 2, "manual")
    lms("unload", A, check=True)

    status, _ = post_json(  # a JIT load from a chat request
        f"{server}/v1/chat/completions",
        {"model": A, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    )
    assert status == 200
    inst = instance(lms)
    assert (inst["contextLength"], inst["parallel"], inst["origin"]) == (2048, 2, "jit")
    lms("unload", A, check=True)

    lms("load", A, "-c", "1024", check=True)  # the load API; what it names wins
    inst = instance(lms)
    assert (inst["contextLength"], inst["parallel"]) == (1024, 2)
