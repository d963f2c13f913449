"""`import_model` of a symbolic link: every mode ends with a usable model in the models
folder and the user's file where it was (never a dangling link, never a lost file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.catalog import scan
from daemon.importer import import_model
from tests.fixtures.gguf_factory import write_gguf

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def real(tmp_path: Path) -> Path:
    path = tmp_path / "store" / "real.gguf"
    write_gguf(path, vocab=500)
    return path


@pytest.fixture
def link(tmp_path: Path, real: Path) -> Path:
    """A relative symbolic link to `real`, under the model's own name."""
    path = tmp_path / "downloads" / NAME
    path.parent.mkdir(parents=True)
    path.symlink_to(os.path.relpath(real, path.parent))
    return path


@pytest.mark.parametrize("mode", ["move", "copy", "hard-link", "symbolic-link"])
def test_a_relative_link_imports_the_file_it_points_to(
    real: Path, link: Path, tmp_path: Path, mode: str
) -> None:
    data = real.read_bytes()
    models = tmp_path / "models"
    result = import_model(link, models, mode=mode, user_repo="alice/smol")  # type: ignore[arg-type]
    target = models / "alice" / "smol" / NAME
    assert target.exists(), "the model in the models folder must not be a dangling link"
    assert target.read_bytes() == data
    assert real.read_bytes() == data, "the user's file is never lost"
    assert scan([models]).resolve("alice/smol").abs_path.resolve().read_bytes() == data
    if mode == "move":
        assert not os.path.lexists(link)  # the link moved
        assert Path(os.readlink(target)) == real.resolve()
        assert any("symbolic link" in w for w in result.warnings)
    else:
        assert link.exists()  # copy and links leave the source as it was
    if mode == "hard-link":
        assert not target.is_symlink() and target.samefile(real)
