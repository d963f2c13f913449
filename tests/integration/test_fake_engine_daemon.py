"""`lmsd --engine fake`: the real daemon process, with the fake engine in its own process
for every model on disk (no worker process), driven by the real CLI and HTTP."""

import pytest

from tests.inprocess import write_models
from tests.support import DaemonFolders, DaemonProcess, LmsRunner, post_json

pytestmark = pytest.mark.integration


def test_the_daemon_serves_every_model_with_the_fake_engine(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    models = folders.root / "models"
    write_models(models)
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    with DaemonProcess(folders, "--engine", "fake", "--port", str(free_port)) as daemon:
        daemon.wait_ready()
        url = f"http://127.0.0.1:{free_port}"
        status, body = post_json(
            f"{url}/v1/chat/completions",
            {"model": "echo", "messages": [{"role": "user", "content": "ping pong"}]},
        )
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "ping pong"
        [instance] = lms.json("ps")
        assert instance["identifier"] == "echo" and instance["pid"] is None
        loaded = lms("load", "thinker", "-y", check=True)
        assert 'use the identifier "thinker"' in loaded.stderr
        status, body = post_json(
            f"{url}/api/v0/chat/completions",
            {"model": "thinker", "messages": [{"role": "user", "content": "2+2?"}]},
        )
        assert body["choices"][0]["message"]["reasoning_content"] == "Two and two."
        assert body["runtime"]["name"] == "fake"
        assert daemon.stop() == 0
