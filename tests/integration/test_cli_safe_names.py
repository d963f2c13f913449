"""Model files whose names hold terminal escapes and newlines, through the real daemon and
CLI: `lms ls` and `lms import` print them escaped (no raw ESC reaches the terminal, no
forged table row); `--json` keeps the exact names."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.gguf_factory import write_gguf, write_truncated
from tests.support import DaemonFolders, LmsRunner

pytestmark = pytest.mark.integration

EVIL = "evil\x1b[31m\nforged-row    1B    Llama    9 MB    Local\x1b]0;pwned\x07"
RAW = ("\x1b", "\x07", "\x9b")


@pytest.fixture
def models_dir(folders: DaemonFolders) -> Path:
    models = folders.root / "models"
    write_gguf(models / "pub" / "repo" / f"{EVIL}-Q4_K_M.gguf", name=EVIL)
    write_truncated(models / "pub" / "broken" / f"cut\x1b[2J\n{EVIL}.gguf")
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    return models


@pytest.fixture
def server(
    folders: DaemonFolders, lms: LmsRunner, models_dir: Path, free_port: int
) -> Iterator[str]:
    lms("server", "start", "--port", str(free_port), check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def test_lms_ls_escapes_names_and_json_keeps_them(server: str, lms: LmsRunner) -> None:
    text = lms("ls", check=True).stdout
    assert not any(c in text for c in RAW), text
    lines = text.splitlines()
    assert not any(line.startswith("forged-row") for line in lines), text
    row = next(line for line in lines if line.startswith("evil"))
    assert "\\x1b[31m\\nforged-row" in row
    unusable = lines[lines.index("UNUSABLE") + 1 :]
    assert len(unusable) == 1 and "cut\\x1b[2J\\nevil" in unusable[0]

    listing = json.loads(lms("ls", "--json", check=True).stdout)
    paths = {m["path"] for m in listing}
    assert f"pub/repo/{EVIL}-Q4_K_M.gguf" in paths
    assert f"pub/broken/cut\x1b[2J\n{EVIL}.gguf" in paths


def test_lms_import_escapes_the_paths_it_prints(
    server: str, lms: LmsRunner, models_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / f"imp\x1b[31m\nforged{EVIL}-Q8_0.gguf"
    write_gguf(source, name="imported")
    dry = lms("import", str(source), "--dry-run", "--user-repo", "me/imp", check=True)
    assert not any(c in dry.stdout + dry.stderr for c in RAW)
    assert len(dry.stdout.strip().splitlines()) == 1 and "imp\\x1b[31m\\nforged" in dry.stdout
    done = lms("import", str(source), "--user-repo", "me/imp", "-y", check=True)
    assert not any(c in done.stdout + done.stderr for c in RAW)
    assert (models_dir / "me" / "imp" / source.name).exists()
