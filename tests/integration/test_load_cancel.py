"""Ctrl-C during `lms load`, for real: SIGINT to the `lms` process while the daemon
(`lmsd --engine fake`) loads a model that would take ten minutes; the load is abandoned
in the daemon and nothing stays loaded."""

import json
import signal
import subprocess
import sys

import pytest

from daemon.engines.fake_impl import GGUF_OPTIONS_KEY
from tests.fixtures.gguf_factory import PLAIN_TEMPLATE, write_gguf
from tests.support import DaemonFolders, DaemonProcess, LmsRunner, wait_until

pytestmark = pytest.mark.integration


def test_ctrl_c_cancels_a_load_in_progress(
    folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    models = folders.root / "models"
    write_gguf(
        models / "test" / "glacial" / "glacial-Q4_K_M.gguf",
        arch="llama",
        name="glacial",
        chat_template=PLAIN_TEMPLATE,
        context_length=4096,
        extra={GGUF_OPTIONS_KEY: json.dumps({"load_delay": 600})},
    )
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    with DaemonProcess(folders, "--engine", "fake", "--port", str(free_port)) as daemon:
        daemon.wait_ready()
        loading = subprocess.Popen(
            [sys.executable, "-m", "lms", "load", "glacial"],
            env=folders.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(lambda: [i["state"] for i in lms.json("ps")] == ["loading"], 30)
            loading.send_signal(signal.SIGINT)
            _, stderr = loading.communicate(timeout=30)
        finally:
            if loading.poll() is None:
                loading.kill()
                loading.wait()
        assert loading.returncode == 130, stderr
        assert "Load cancelled." in stderr and "Traceback" not in stderr
        assert wait_until(lambda: lms.json("ps") == [], 30), "the daemon abandoned the load"
        assert daemon.stop() == 0
