"""The catalog through the real daemon and CLI: `lms ls`, `lms import`, /api/v0/models,
/v1/models, with a real chat model, a bert embedding GGUF, an MLX directory, a truncated
GGUF and a file that is not a model."""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gguf_factory import write_gguf, write_mlx_dir, write_not_gguf, write_truncated
from tests.support import DaemonFolders, LmsRunner, http_get, link_smollm2

pytestmark = pytest.mark.integration


@pytest.fixture
def models_dir(folders: DaemonFolders) -> Path:
    models = folders.root / "models"
    link_smollm2(models)
    write_gguf(
        models / "nomic-ai" / "bert-mini-GGUF" / "bert-mini.F16.gguf",
        arch="bert",
        name="bert-mini",
        chat_template=None,
        context_length=512,
        file_type=1,
    )
    write_mlx_dir(models / "mlx-community" / "Tiny-Llama-4bit", max_position_embeddings=2048)
    write_truncated(models / "broken" / "cut-GGUF" / "cut.Q8_0.gguf")
    write_not_gguf(models / "broken" / "cut-GGUF" / "README.md")
    folders.extra_env["LMS_MODELS_DIRS"] = str(models)
    return models


@pytest.fixture
def server(
    folders: DaemonFolders, lms: LmsRunner, models_dir: Path, free_port: int
) -> Iterator[str]:
    lms("server", "start", "--port", str(free_port), check=True)
    yield f"http://127.0.0.1:{free_port}"
    lms("daemon", "down")


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in items}


def test_api_v0_models_lists_each_kind_with_the_seed_shape(server: str) -> None:
    status, body = http_get(f"{server}/api/v0/models")
    assert status == 200 and body["object"] == "list"
    models = by_id(body["data"])
    assert set(models) == {"smollm2-135m-instruct", "text-embedding-bert-mini", "tiny-llama"}, (
        "the truncated GGUF and the README are not offered to API clients"
    )
    seed_keys = {
        "id",
        "object",
        "type",
        "publisher",
        "arch",
        "compatibility_type",
        "quantization",
        "state",
        "max_context_length",
    }
    for item in models.values():
        assert seed_keys <= set(item)
        assert item["object"] == "model" and item["state"] == "not-loaded"
        assert isinstance(item["capabilities"], list)
    smol = models["smollm2-135m-instruct"]
    assert (
        smol["type"],
        smol["publisher"],
        smol["arch"],
        smol["compatibility_type"],
        smol["quantization"],
        smol["max_context_length"],
    ) == ("llm", "HuggingFaceTB", "llama", "gguf", "Q4_1", 8192)
    bert = models["text-embedding-bert-mini"]
    assert (bert["type"], bert["arch"], bert["quantization"], bert["max_context_length"]) == (
        "embeddings",
        "bert",
        "F16",
        512,
    )
    mlx = models["tiny-llama"]
    assert (
        mlx["type"],
        mlx["compatibility_type"],
        mlx["quantization"],
        mlx["arch"],
        mlx["max_context_length"],
    ) == ("llm", "mlx", "4bit", "llama", 2048)


def test_api_v0_model_by_key_alias_and_variant(server: str) -> None:
    for name in (
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "smollm2-135m-instruct@q4_1",
    ):
        status, body = http_get(f"{server}/api/v0/models/{name}")
        assert status == 200, (name, body)
        assert body["id"] == "smollm2-135m-instruct" and body["quantization"] == "Q4_1"


@pytest.mark.parametrize("name", ["no-such-model", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"])
def test_unknown_model_is_404_model_not_found(server: str, name: str) -> None:
    status, body = http_get(f"{server}/api/v0/models/{name}")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"
    assert "smollm2-135m-instruct" in body["error"]["message"], "lists what is available"


def test_v1_models_follows_jit_setting(
    server: str, folders: DaemonFolders, lms: LmsRunner, free_port: int
) -> None:
    status, body = http_get(f"{server}/v1/models")
    assert status == 200 and body["object"] == "list"
    ids = {m["id"] for m in body["data"]}
    assert ids == {"smollm2-135m-instruct", "text-embedding-bert-mini", "tiny-llama"}
    for model in body["data"]:
        assert model["object"] == "model" and isinstance(model["created"], int)
        assert isinstance(model["owned_by"], str)
    lms("daemon", "down", check=True)
    folders.extra_env["LMS_JIT_LOADING"] = "false"
    lms("server", "start", "--port", str(free_port), check=True)
    status, body = http_get(f"{server}/v1/models")
    assert (status, body["data"]) == (200, []), "with JIT off, only loaded models are listed"


def test_lms_ls_text_and_json(server: str, lms: LmsRunner) -> None:
    text = lms("ls", check=True).stdout
    lines = text.splitlines()
    assert lines[0].startswith("You have 3 models, taking up ")
    assert lines[0].endswith(" of disk space.")
    llm_header = next(i for i, line in enumerate(lines) if line.startswith("LLM"))
    assert lines[llm_header].split() == ["LLM", "PARAMS", "ARCH", "SIZE", "DEVICE"]
    smol_row = next(line for line in lines if line.startswith("smollm2-135m-instruct"))
    assert smol_row.split()[1:] == ["135M", "Llama", "98.36", "MB", "Local"]
    assert any(line.startswith("EMBEDDING") for line in lines)
    assert any(line.startswith("text-embedding-bert-mini") for line in lines)
    assert any("cut.Q8_0.gguf" in line for line in lines), "unusable files are shown"

    listing = lms.json("ls")
    keys = {m["modelKey"]: m for m in listing}
    assert set(keys) >= {"smollm2-135m-instruct", "text-embedding-bert-mini", "tiny-llama"}
    smol = keys["smollm2-135m-instruct"]
    assert smol["type"] == "llm" and smol["format"] == "gguf" and smol["paramsString"] == "135M"
    assert smol["quantization"] == {"name": "Q4_1", "bits": 4}
    assert smol["sizeBytes"] == 98362432
    assert keys["tiny-llama"]["format"] == "safetensors"
    broken = [m for m in listing if "error" in m]
    assert len(broken) == 1 and "cut.Q8_0.gguf" in broken[0]["path"]

    only_llm = {m["modelKey"] for m in lms.json("ls", "--llm")}
    assert "text-embedding-bert-mini" not in only_llm and "smollm2-135m-instruct" in only_llm
    only_embedding = {m["modelKey"] for m in lms.json("ls", "--embedding")}
    assert only_embedding == {"text-embedding-bert-mini"}
    text = lms("ls", "--embedding", check=True).stdout
    assert "smollm2" not in text and "text-embedding-bert-mini" in text


def test_lms_import_each_mode(
    server: str, lms: LmsRunner, folders: DaemonFolders, models_dir: Path, tmp_path: Path
) -> None:
    sources = {}
    for mode in ("move", "copy", "hard-link", "symbolic-link"):
        sources[mode] = write_gguf(
            tmp_path / f"Imp-{mode}.Q8_0.gguf", name=f"imp {mode}", file_type=7
        )[0]
    flags = {
        "move": [],
        "copy": ["--copy"],
        "hard-link": ["--hard-link"],
        "symbolic-link": ["--symbolic-link"],
    }
    for mode, source in sources.items():
        result = lms(
            "import", str(source), *flags[mode], "--user-repo", f"me/{mode}", "-y", check=True
        )
        target = models_dir / "me" / mode / source.name
        assert str(target) in result.stderr
        assert target.exists()
        assert source.exists() == (mode != "move")
        if mode == "hard-link":
            assert target.stat().st_ino == source.stat().st_ino
        if mode == "symbolic-link":
            assert target.is_symlink() and target.resolve() == source.resolve()
    keys = {m["modelKey"] for m in lms.json("ls")}
    assert {"imp-move", "imp-copy", "imp-hard-link", "imp-symbolic-link"} <= keys
    status, body = http_get(f"{server}/api/v0/models/imp-copy")
    assert status == 200 and body["quantization"] == "Q8_0"


def test_lms_import_dry_run_existing_name_and_not_gguf(
    server: str, lms: LmsRunner, models_dir: Path, tmp_path: Path
) -> None:
    source = write_gguf(tmp_path / "Dry.Q4_K_M.gguf", name="dry")[0]
    result = lms("import", str(source), "--dry-run", "--user-repo", "me/dry", check=True)
    target = models_dir / "me" / "dry" / "Dry.Q4_K_M.gguf"
    assert result.stdout.strip() == f"Would move {source} to {target}"
    assert source.exists() and not target.exists()

    lms("import", str(source), "--copy", "--user-repo", "me/dry", "-y", check=True)
    before = target.read_bytes()
    again = lms("import", str(source), "--copy", "--user-repo", "me/dry", "-y")
    assert again.returncode == 1
    assert "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert target.read_bytes() == before

    text_file = write_not_gguf(tmp_path / "notes.gguf")
    result = lms("import", str(text_file), "-y", "--user-repo", "me/notes")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {text_file} is not a GGUF file"
    assert text_file.exists(), "a refused move leaves the source where it was"
    assert not (models_dir / "me" / "notes").exists() or not any(
        (models_dir / "me" / "notes").iterdir()
    )

    result = lms("import", str(source), "--copy", "--symbolic-link", "-y")
    assert result.returncode == 1 and "at most one" in result.stderr


def test_import_is_refused_over_tcp(server: str, tmp_path: Path) -> None:
    import urllib.request

    source = write_gguf(tmp_path / "Tcp.Q4_K_M.gguf")[0]
    request = urllib.request.Request(
        f"{server}/api/admin/models/import",
        data=json.dumps({"path": str(source), "mode": "copy"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("import over TCP succeeded")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    assert os.path.exists(source)
