"""A daemon shared by the inference tests of one module: the real `lmsd` with the bundled
SmolLM2 model, started through the real CLI."""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import minilm
from tests.support import DaemonFolders, LmsRunner, link_smollm2, reap_daemon


@dataclass
class RunningDaemon:
    folders: DaemonFolders
    lms: LmsRunner
    url: str
    models_dir: Path


@contextlib.contextmanager
def running_daemon(
    prefix: str, populate: Callable[[Path, Path], None], env: dict[str, str]
) -> Iterator[RunningDaemon]:
    """A real daemon in its own folders, started with `lms server start` on a free port;
    `populate(models_dir, root)` fills its models folder first. Always stopped and reaped."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    folders = DaemonFolders(root)
    models = root / "models"
    populate(models, root)
    folders.extra_env.update({"LMS_MODELS_DIRS": str(models), **env})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lms = LmsRunner(folders)
    try:
        lms("server", "start", "--port", str(port), check=True)
        yield RunningDaemon(folders, lms, f"http://127.0.0.1:{port}", models)
    finally:
        subprocess.run(
            [sys.executable, "-m", "lms", "daemon", "down"],
            env=folders.env,
            capture_output=True,
            timeout=60,
        )
        reap_daemon(folders)
        shutil.rmtree(root, ignore_errors=True)


def _smollm2_and_minilm(models: Path, root: Path) -> None:
    link_smollm2(models)
    if minilm.unavailable_reason() is None:  # a real embedding model, when its package is in
        built = minilm.minilm_gguf_once(root / "build")
        target = models / built.relative_to(built.parents[2])
        target.parent.mkdir(parents=True)
        target.symlink_to(built)


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    env = {
        "LMS_DEFAULT_CONTEXT_LENGTH": "1024",
        "LMS_MAX_BODY_BYTES": str(256 * 1024),
        "LMS_METRICS": "1",  # GET /metrics: tests count the tokens a prediction generated
    }
    with running_daemon("lms-m-", _smollm2_and_minilm, env) as running:
        yield running
