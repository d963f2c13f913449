"""A daemon shared by the inference tests of one module: the real `lmsd` with the bundled
SmolLM2 model, started through the real CLI."""

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    root = Path(tempfile.mkdtemp(prefix="lms-m-"))
    folders = DaemonFolders(root)
    models = root / "models"
    link_smollm2(models)
    if minilm.unavailable_reason() is None:  # a real embedding model, when its package is in
        built = minilm.minilm_gguf_once(root / "build")
        target = models / built.relative_to(built.parents[2])
        target.parent.mkdir(parents=True)
        target.symlink_to(built)
    folders.extra_env.update(
        {
            "LMS_MODELS_DIRS": str(models),
            "LMS_DEFAULT_CONTEXT_LENGTH": "1024",
            "LMS_MAX_BODY_BYTES": str(256 * 1024),
        }
    )
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
