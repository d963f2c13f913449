"""Model discovery, keys, variants, resolution, wire shapes and the header cache."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from gguf import LlamaFileType, PoolingType

from daemon.catalog import Catalog, ModelRecord, safe_model_path, scan, to_ls_json, to_v0_dict
from daemon.errors import AmbiguousModel, InvalidRequest, ModelNotFound
from daemon.gguf import GgufInfo, read_gguf_info
from daemon.header_cache import HeaderCache
from daemon.model_keys import format_params, model_key, params_from_name, variant_rank
from tests.fixtures.gguf_factory import (
    DEFAULT_PARAMS,
    TOOL_TEMPLATE,
    write_gguf,
    write_mlx_dir,
    write_mmproj,
    write_not_gguf,
    write_truncated,
)


def q(name: str) -> int:
    return int(LlamaFileType[f"MOSTLY_{name}"])


class CountingReader:
    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> GgufInfo:
        self.calls.append(path)
        return read_gguf_info(path)


# --- naming rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "key"),
    [
        ("SmolLM2-135M-Instruct.Q4_1", "smollm2-135m-instruct"),
        ("Meta-Llama-3.1-8B-Instruct-Q4_K_M", "meta-llama-3.1-8b-instruct"),
        ("qwen2.5-7b-instruct-q8_0", "qwen2.5-7b-instruct"),
        ("nomic-embed-text-v1.5.f16", "nomic-embed-text-v1.5"),
        ("Mistral-7B-Instruct-v0.3_IQ2_XXS", "mistral-7b-instruct-v0.3"),
        ("Qwen3-8B-UD-Q4_K_XL", "qwen3-8b"),
        ("Llama-3.2-1B.i1-Q4_K_M", "llama-3.2-1b"),
        ("gemma-2-2b-it-BF16", "gemma-2-2b-it"),
        ("Qwen2-VL-7B-Instruct-4bit", "qwen2-vl-7b-instruct"),
        ("Llama-3.2-3B-Instruct-MLX-8bit", "llama-3.2-3b-instruct"),
        ("Phi-3-mini-4k-instruct-GGUF", "phi-3-mini-4k-instruct"),
        ("Q4_K_M", "q4_k_m"),  # never stripped to nothing
        ("model", "model"),
    ],
)
def test_model_key(stem: str, key: str) -> None:
    assert model_key(stem) == key


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (134_515_008, "135M"),
        (8_030_261_248, "8B"),
        (1_543_714_304, "1.5B"),
        (7_615_616_512, "7.6B"),
        (70_553_706_496, "71B"),
        (22_000, "22K"),
        (104, "104"),
        (0, None),
    ],
)
def test_format_params(n: int, text: str | None) -> None:
    assert format_params(n) == text


def test_params_from_name() -> None:
    assert params_from_name("Llama-3.2-1B-Instruct-4bit") == "1B"
    assert params_from_name("SmolLM2-135M-Instruct") == "135M"
    assert params_from_name("Qwen2.5-0.5B-Instruct") == "0.5B"
    assert params_from_name("Mixtral-8x7B-v0.1") == "8x7B"
    assert params_from_name("gemma-it") is None


def test_variant_preference() -> None:
    ranked = sorted(["Q8_0", "F16", "Q2_K", "Q6_K", "Q4_K_M", "Q5_K_M"], key=variant_rank)
    assert ranked == ["Q4_K_M", "Q6_K", "Q5_K_M", "Q2_K", "Q8_0", "F16"]
    assert sorted(["8bit", "4bit", "bfloat16"], key=variant_rank) == ["4bit", "8bit", "bfloat16"]
    assert variant_rank("Q4_K_M", "broken") > variant_rank(None)


# --- discovery ---------------------------------------------------------------------------


@pytest.fixture
def models(tmp_path: Path) -> Path:
    m = tmp_path / "models"
    llama = m / "lmstudio-community" / "Meta-Llama-3.1-8B-Instruct-GGUF"
    write_gguf(
        llama / "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
        chat_template=TOOL_TEMPLATE,
        context_length=131072,
    )
    write_gguf(
        llama / "Meta-Llama-3.1-8B-Instruct-Q8_0.gguf", file_type=q("Q8_0"), context_length=131072
    )
    write_gguf(
        m / "nomic-ai" / "nomic-embed-text-v1.5-GGUF" / "nomic-embed-text-v1.5.Q4_0.gguf",
        arch="nomic-bert",
        file_type=q("Q4_0"),
        chat_template=None,
        context_length=2048,
        pooling=PoolingType.MEAN,
    )
    write_gguf(m / "vendor" / "Vision-7B-GGUF" / "Vision-7B-Q4_K_M.gguf")
    write_mmproj(m / "vendor" / "Vision-7B-GGUF" / "mmproj-Vision-7B-f16.gguf")
    write_gguf(
        m / "vendor" / "Big-GGUF" / "Big-Q6_K.gguf", split_max_tensors=1, file_type=q("Q6_K")
    )
    write_gguf(m / "flat" / "Flat-3B.Q5_K_M.gguf", file_type=q("Q5_K_M"))
    write_gguf(m / "deep" / "repo" / "sub" / "dir" / "Deep-Q4_0.gguf", file_type=q("Q4_0"))
    write_truncated(m / "broken" / "Broken-GGUF" / "Broken-Q4_K_M.gguf")
    write_not_gguf(m / "broken" / "Broken-GGUF" / "README.md")
    write_not_gguf(m / "broken" / "Broken-GGUF" / "notes.txt")
    write_mlx_dir(
        m / "mlx-community" / "Qwen2-VL-7B-Instruct-4bit", model_type="qwen2_vl", vision=True
    )
    return m


def by_key(catalog: Catalog) -> dict[str, ModelRecord]:
    return {r.variant_key: r for r in catalog.records}


def test_scan_finds_every_model_once(models: Path) -> None:
    catalog = scan([models])
    assert sorted(by_key(catalog)) == [
        "big@q6_k",
        "broken@q4_k_m",
        "deep@q4_0",
        "flat-3b@q5_k_m",
        "meta-llama-3.1-8b-instruct@q4_k_m",
        "meta-llama-3.1-8b-instruct@q8_0",
        "qwen2-vl-7b-instruct@4bit",
        "text-embedding-nomic-embed-text-v1.5@q4_0",
        "vision-7b@q4_k_m",
    ]


def test_gguf_record_fields(models: Path) -> None:
    r = by_key(scan([models]))["meta-llama-3.1-8b-instruct@q4_k_m"]
    assert r.path == (
        "lmstudio-community/Meta-Llama-3.1-8B-Instruct-GGUF/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    )
    assert r.abs_path == models / r.path
    assert r.models_dir == models
    assert (r.publisher, r.repo) == ("lmstudio-community", "Meta-Llama-3.1-8B-Instruct-GGUF")
    assert (r.format, r.type, r.arch, r.quantization) == ("gguf", "llm", "llama", "Q4_K_M")
    assert r.max_context_length == 131072
    assert r.size_bytes == r.abs_path.stat().st_size
    assert r.parameter_count == DEFAULT_PARAMS and r.params_string == "104"
    assert r.capabilities == ("tool_use",)
    assert r.display_name == "Meta Llama 3.1 8B Instruct"
    assert r.files == (r.abs_path,)
    assert r.mmproj is None and r.error is None


def test_flat_and_deep_layouts(models: Path) -> None:
    records = by_key(scan([models]))
    flat = records["flat-3b@q5_k_m"]
    assert (flat.publisher, flat.repo, flat.path) == ("flat", None, "flat/Flat-3B.Q5_K_M.gguf")
    deep = records["deep@q4_0"]
    assert (deep.publisher, deep.repo) == ("deep", "repo")
    assert deep.path == "deep/repo/sub/dir/Deep-Q4_0.gguf"


def test_split_model_is_one_record(models: Path) -> None:
    r = by_key(scan([models]))["big@q6_k"]
    folder = models / "vendor" / "Big-GGUF"
    parts = [folder / f"Big-Q6_K-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert r.files == tuple(parts)
    assert r.path == "vendor/Big-GGUF/Big-Q6_K-00001-of-00003.gguf"
    assert r.size_bytes == sum(p.stat().st_size for p in parts)
    assert r.parameter_count == DEFAULT_PARAMS  # summed over the parts
    assert r.arch == "llama" and r.error is None


def test_split_model_with_a_missing_part_has_an_error(models: Path) -> None:
    (models / "vendor" / "Big-GGUF" / "Big-Q6_K-00002-of-00003.gguf").unlink()
    r = by_key(scan([models]))["big@q6_k"]
    assert r.error is not None and "missing part(s) 2 of 3" in r.error
    assert len(r.files) == 2


def test_mmproj_makes_a_vlm_and_is_not_listed(models: Path) -> None:
    catalog = scan([models])
    r = by_key(catalog)["vision-7b@q4_k_m"]
    assert r.type == "vlm"
    assert r.mmproj == models / "vendor" / "Vision-7B-GGUF" / "mmproj-Vision-7B-f16.gguf"
    assert not any("mmproj" in rec.path for rec in catalog.records)


def test_projector_found_by_header_without_mmproj_in_name(tmp_path: Path) -> None:
    write_gguf(tmp_path / "p" / "r" / "Cam-Q4_K_M.gguf")
    write_mmproj(tmp_path / "p" / "r" / "vision-encoder.gguf")
    catalog = scan([tmp_path])
    assert [(r.key, r.type) for r in catalog.records] == [("cam", "vlm")]


def test_embedding_model(models: Path) -> None:
    catalog = scan([models])
    r = by_key(catalog)["text-embedding-nomic-embed-text-v1.5@q4_0"]
    assert (r.type, r.arch, r.max_context_length) == ("embeddings", "nomic-bert", 2048)
    assert catalog.resolve("nomic-embed-text-v1.5") is r  # without the prefix too
    assert catalog.resolve("text-embedding-nomic-embed-text-v1.5@Q4_0") is r


def test_corrupt_file_is_listed_with_an_error(models: Path) -> None:
    catalog = scan([models])
    r = by_key(catalog)["broken@q4_k_m"]
    assert r.error is not None and "truncated" in r.error
    assert r.arch is None and r.quantization == "Q4_K_M"  # from the file name
    assert not any(rec.path.endswith((".md", ".txt")) for rec in catalog.records)


def test_hidden_and_partial_files_are_ignored(tmp_path: Path) -> None:
    write_gguf(tmp_path / "p" / "r" / ".Model-Q4_K_M.gguf.partial-abc123")
    write_gguf(tmp_path / "p" / "r" / ".hidden-Q4_K_M.gguf")
    write_gguf(tmp_path / "p" / ".git" / "x-Q4_K_M.gguf")
    assert len(scan([tmp_path])) == 0


def test_mlx_directories(tmp_path: Path) -> None:
    write_mlx_dir(
        tmp_path / "mlx-community" / "Qwen2-VL-7B-Instruct-4bit",
        model_type="qwen2_vl",
        vision=True,
        max_position_embeddings=32768,
    )
    write_mlx_dir(
        tmp_path / "mlx-community" / "Llama-3.2-3B-Instruct-8bit",
        bits=8,
        quant_key="quantization_config",
        tool_template=True,
    )
    write_mlx_dir(
        tmp_path / "mlx-community" / "Qwen3-0.6B-bf16",
        bits=None,
        dtype="bfloat16",
        model_type="qwen3",
    )
    (tmp_path / "mlx-community" / "NoWeights").mkdir()
    (tmp_path / "mlx-community" / "NoWeights" / "config.json").write_text("{}")
    records = by_key(scan([tmp_path]))
    vl = records["qwen2-vl-7b-instruct@4bit"]
    assert (vl.format, vl.type, vl.arch, vl.max_context_length) == ("mlx", "vlm", "qwen2_vl", 32768)
    assert vl.path == "mlx-community/Qwen2-VL-7B-Instruct-4bit" and vl.params_string == "7B"
    assert vl.size_bytes == sum(f.stat().st_size for f in vl.files) and len(vl.files) == 3
    llama = records["llama-3.2-3b-instruct@8bit"]
    assert (llama.type, llama.quantization, llama.capabilities) == ("llm", "8bit", ("tool_use",))
    assert records["qwen3-0.6b@bfloat16"].quantization == "bfloat16"
    assert len(records) == 3


def test_mlx_bad_config_is_listed_with_an_error(tmp_path: Path) -> None:
    folder = write_mlx_dir(tmp_path / "p" / "Broken-4bit")
    (folder / "config.json").write_text("{not json")
    [r] = scan([tmp_path]).records
    assert r.error is not None and r.error.startswith("config.json")


def test_several_models_dirs_and_missing_ones(tmp_path: Path) -> None:
    write_gguf(tmp_path / "a" / "p" / "r" / "One-Q4_K_M.gguf")
    write_gguf(tmp_path / "b" / "p" / "r" / "Two-Q4_K_M.gguf")
    catalog = scan([tmp_path / "a", tmp_path / "b", tmp_path / "missing"])
    assert catalog.keys() == ["one", "two"]
    assert catalog.resolve("two").models_dir == tmp_path / "b"


# --- resolution --------------------------------------------------------------------------


def test_resolve_forms(models: Path) -> None:
    catalog = scan([models])
    q4 = by_key(catalog)["meta-llama-3.1-8b-instruct@q4_k_m"]
    q8 = by_key(catalog)["meta-llama-3.1-8b-instruct@q8_0"]
    assert catalog.resolve("meta-llama-3.1-8b-instruct") is q4  # default variant
    assert catalog.resolve("Meta-Llama-3.1-8B-Instruct") is q4
    assert catalog.resolve("meta-llama-3.1-8b-instruct@q8_0") is q8
    assert catalog.resolve("META-LLAMA-3.1-8B-INSTRUCT@Q8_0") is q8
    assert catalog.resolve("lmstudio-community/meta-llama-3.1-8b-instruct-gguf") is q4
    assert catalog.resolve("lmstudio-community/meta-llama-3.1-8b-instruct@q8_0") is q8
    assert catalog.resolve(q8.path) is q8
    assert catalog.resolve(q8.path.upper()) is q8
    assert catalog.resolve("  meta-llama-3.1-8b-instruct  ") is q4
    assert catalog.variants("meta-llama-3.1-8b-instruct") == (q4, q8)


def test_default_variant_without_q4_k_m(tmp_path: Path) -> None:
    folder = tmp_path / "p" / "r"
    for quant in ("Q8_0", "Q6_K", "Q3_K_M", "F16"):
        write_gguf(folder / f"M-{quant}.gguf", file_type=q(quant))
    catalog = scan([tmp_path])
    assert catalog.resolve("m").quantization == "Q6_K"
    assert [r.quantization for r in catalog.variants("m")] == ["Q6_K", "Q3_K_M", "Q8_0", "F16"]


def test_broken_variant_is_never_the_default(tmp_path: Path) -> None:
    write_truncated(tmp_path / "p" / "r" / "M-Q4_K_M.gguf")
    write_gguf(tmp_path / "p" / "r" / "M-Q8_0.gguf", file_type=q("Q8_0"))
    catalog = scan([tmp_path])
    assert catalog.resolve("m").quantization == "Q8_0"
    assert catalog.resolve("m@q4_k_m").error is not None


def test_same_key_and_quant_from_two_publishers_is_ambiguous(tmp_path: Path) -> None:
    write_gguf(tmp_path / "alice" / "M-GGUF" / "M-Q4_K_M.gguf")
    write_gguf(tmp_path / "bob" / "M-GGUF" / "M-Q4_K_M.gguf")
    write_gguf(tmp_path / "bob" / "M-GGUF" / "M-Q8_0.gguf", file_type=q("Q8_0"))
    catalog = scan([tmp_path])
    for name in ("m", "m@q4_k_m"):
        with pytest.raises(AmbiguousModel) as info:
            catalog.resolve(name)
        assert info.value.candidates == ["alice/M-GGUF/M-Q4_K_M.gguf", "bob/M-GGUF/M-Q4_K_M.gguf"]
        assert isinstance(info.value, InvalidRequest)
        assert "alice/M-GGUF/M-Q4_K_M.gguf" in str(info.value)
    assert catalog.resolve("m@q8_0").publisher == "bob"  # unique quant: fine
    assert catalog.resolve("alice/m").publisher == "alice"
    assert catalog.resolve("bob/m").quantization == "Q4_K_M"
    assert catalog.resolve("bob/M-GGUF/M-Q4_K_M.gguf").publisher == "bob"


def test_repo_alias_picks_the_best_variant_across_keys(tmp_path: Path) -> None:
    folder = tmp_path / "pub" / "Model-GGUF"
    write_gguf(folder / "Model-Base-Q8_0.gguf", file_type=q("Q8_0"))
    write_gguf(folder / "Model-Chat-Q4_K_M.gguf")
    catalog = scan([tmp_path])
    assert catalog.resolve("pub/model-gguf").key == "model-chat"
    write_gguf(folder / "Model-Base-Q4_K_M.gguf")
    with pytest.raises(AmbiguousModel):
        scan([tmp_path]).resolve("pub/model-gguf")


def test_public_id_resolves_back_to_its_record(models: Path, tmp_path: Path) -> None:
    write_gguf(
        models
        / "other"
        / "Meta-Llama-3.1-8B-Instruct-GGUF"
        / "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    )
    catalog = scan([models])
    ids = [catalog.public_id(r) for r in catalog.records]
    assert len(set(ids)) == len(ids)
    for r, name in zip(catalog.records, ids, strict=True):
        assert catalog.resolve(name) is r
    assert "meta-llama-3.1-8b-instruct@q8_0" in ids
    assert "other/meta-llama-3.1-8b-instruct@q4_k_m" in ids


def test_not_found_lists_available_keys(models: Path, tmp_path: Path) -> None:
    catalog = scan([models])
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve("gpt-5")
    assert "gpt-5" in str(info.value) and "meta-llama-3.1-8b-instruct" in str(info.value)
    with pytest.raises(ModelNotFound, match="no models in"):
        scan([tmp_path / "empty"]).resolve("anything")


def test_search(models: Path) -> None:
    catalog = scan([models])
    keys = [r.variant_key for r in catalog.search("llama")]
    assert keys[:2] == ["meta-llama-3.1-8b-instruct@q4_k_m", "meta-llama-3.1-8b-instruct@q8_0"]
    assert [r.key for r in catalog.search("vision")] == ["vision-7b"]
    assert [r.key for r in catalog.search("vis7b")] == ["vision-7b"]  # subsequence
    assert [r.key for r in catalog.search("qwen vl")] == ["qwen2-vl-7b-instruct"]
    assert catalog.search("zzz") == []
    assert len(catalog.search("")) == len(catalog)
    # an exact key ranks before keys that merely contain it
    assert catalog.search("big")[0].key == "big"


# --- wire shapes -------------------------------------------------------------------------


def test_v0_shape(models: Path) -> None:
    catalog = scan([models])
    r = catalog.resolve("meta-llama-3.1-8b-instruct")
    assert to_v0_dict(r, "not-loaded") == {
        "id": "meta-llama-3.1-8b-instruct",
        "object": "model",
        "type": "llm",
        "publisher": "lmstudio-community",
        "arch": "llama",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": "not-loaded",
        "max_context_length": 131072,
        "capabilities": ["tool_use"],
    }
    loaded = to_v0_dict(r, "loaded", 8192)
    assert list(loaded)[-2:] == ["loaded_context_length", "capabilities"]
    assert loaded["loaded_context_length"] == 8192 and loaded["state"] == "loaded"
    mlx = to_v0_dict(catalog.resolve("qwen2-vl-7b-instruct"), "not-loaded")
    assert {
        k: mlx[k]
        for k in (
            "id",
            "type",
            "publisher",
            "arch",
            "compatibility_type",
            "quantization",
            "max_context_length",
        )
    } == {
        "id": "qwen2-vl-7b-instruct",
        "type": "vlm",
        "publisher": "mlx-community",
        "arch": "qwen2_vl",
        "compatibility_type": "mlx",
        "quantization": "4bit",
        "max_context_length": 32768,
    }
    emb = to_v0_dict(catalog.resolve("nomic-embed-text-v1.5"), "not-loaded")
    assert (emb["id"], emb["type"], emb["capabilities"]) == (
        "text-embedding-nomic-embed-text-v1.5",
        "embeddings",
        [],
    )
    assert to_v0_dict(r, "not-loaded", model_id="x@q8_0")["id"] == "x@q8_0"
    json.dumps(loaded)


def test_ls_json_shape(models: Path) -> None:
    catalog = scan([models])
    r = catalog.resolve("meta-llama-3.1-8b-instruct")
    assert to_ls_json(r) == {
        "type": "llm",
        "modelKey": "meta-llama-3.1-8b-instruct",
        "format": "gguf",
        "displayName": "Meta Llama 3.1 8B Instruct",
        "publisher": "lmstudio-community",
        "path": r.path,
        "sizeBytes": r.size_bytes,
        "indexedModelIdentifier": r.path,
        "deviceIdentifier": None,
        "paramsString": "104",
        "architecture": "llama",
        "quantization": {"name": "Q4_K_M", "bits": 4},
        "maxContextLength": 131072,
        "vision": False,
        "trainedForToolUse": True,
    }
    emb = to_ls_json(catalog.resolve("nomic-embed-text-v1.5"))
    assert emb["type"] == "embedding" and "vision" not in emb and "trainedForToolUse" not in emb
    mlx = to_ls_json(catalog.resolve("qwen2-vl-7b-instruct"))
    assert (mlx["format"], mlx["vision"], mlx["quantization"]) == (
        "safetensors",
        True,
        {"name": "4bit", "bits": 4},
    )


# --- header cache ------------------------------------------------------------------------


def test_warm_scan_reads_no_header(models: Path, tmp_path: Path) -> None:
    cache_file = tmp_path / "state" / "catalog-cache.json"
    cold_reader = CountingReader()
    cold = scan([models], HeaderCache.load(cache_file), reader=cold_reader)
    assert len(cold_reader.calls) == 10  # 9 GGUF files + 0 for mmproj-named + split parts
    assert cache_file.is_file()
    assert not [p for p in cache_file.parent.iterdir() if p.name != cache_file.name]
    warm_reader = CountingReader()
    warm = scan([models], HeaderCache.load(cache_file), reader=warm_reader)
    assert warm_reader.calls == []
    assert warm.records == cold.records


def test_cache_trusts_size_and_mtime(tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = models / "p" / "r" / "M-Q4_K_M.gguf"
    write_gguf(path, context_length=4096)
    cache_file = tmp_path / "cache.json"
    assert scan([models], HeaderCache.load(cache_file)).resolve("m").max_context_length == 4096
    st = path.stat()
    write_gguf(path, context_length=8192)  # same size, different contents
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    cached = scan([models], HeaderCache.load(cache_file)).resolve("m")
    assert cached.max_context_length == 4096  # the header was not read again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fresh = scan([models], HeaderCache.load(cache_file)).resolve("m")
    assert fresh.max_context_length == 8192


def test_cache_remembers_broken_files_and_forgets_deleted_ones(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_truncated(models / "p" / "r" / "Bad-Q4_K_M.gguf")
    write_gguf(models / "p" / "r" / "Good-Q4_K_M.gguf")
    cache_file = tmp_path / "cache.json"
    scan([models], HeaderCache.load(cache_file))
    reader = CountingReader()
    catalog = scan([models], HeaderCache.load(cache_file), reader=reader)
    assert reader.calls == [] and catalog.resolve("bad").error is not None
    (models / "p" / "r" / "Good-Q4_K_M.gguf").unlink()
    scan([models], HeaderCache.load(cache_file))
    entries = json.loads(cache_file.read_text())["entries"]
    assert list(entries) == [str(models / "p" / "r" / "Bad-Q4_K_M.gguf")]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"version": 999, "entries": {}}',
        b"\xff\xfe",
        b'{"version": 1, "entries": {"/x": {"size": "big"}}}',
    ],
)
def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path: Path, content: bytes) -> None:
    models = tmp_path / "models"
    write_gguf(models / "p" / "r" / "M-Q4_K_M.gguf")
    cache_file = tmp_path / "cache.json"
    cache_file.write_bytes(content)
    reader = CountingReader()
    assert scan([models], HeaderCache.load(cache_file), reader=reader).keys() == ["m"]
    assert len(reader.calls) == 1
    assert json.loads(cache_file.read_text())["version"] == 1
    reader = CountingReader()
    scan([models], HeaderCache.load(cache_file), reader=reader)
    assert reader.calls == []


def test_bad_cached_info_is_reread(tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = models / "p" / "r" / "M-Q4_K_M.gguf"
    write_gguf(path)
    cache_file = tmp_path / "cache.json"
    scan([models], HeaderCache.load(cache_file))
    data = json.loads(cache_file.read_text())
    del data["entries"][str(path)]["info"]["architecture"]
    cache_file.write_text(json.dumps(data))
    reader = CountingReader()
    assert scan([models], HeaderCache.load(cache_file), reader=reader).resolve("m").arch == "llama"
    assert reader.calls == [path]


def test_unwritable_cache_does_not_break_a_scan(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_gguf(models / "p" / "r" / "M-Q4_K_M.gguf")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert scan([models], HeaderCache(blocker / "cache.json")).keys() == ["m"]


def test_warm_scan_of_300_models_opens_no_model_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What makes a warm scan fast, counted rather than timed: no model file is opened.
    models = tmp_path / "models"
    template = models / "p" / "r" / "M0-Q4_K_M.gguf"
    write_gguf(template, vocab=200)
    blob = template.read_bytes()
    for i in range(1, 300):
        folder = models / f"pub{i % 10}" / f"repo{i}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"M{i}-Q4_K_M.gguf").write_bytes(blob)
    cache_file = tmp_path / "cache.json"
    assert len(scan([models], HeaderCache.load(cache_file))) == 300
    opened: list[str] = []
    real_open = builtins.open

    def tracking_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", tracking_open)
    monkeypatch.setattr(io, "open", tracking_open)
    reader = CountingReader()
    catalog = scan([models], HeaderCache.load(cache_file), reader=reader)
    assert reader.calls == [] and len(catalog) == 300
    assert [path for path in opened if path.startswith(str(models))] == []


# --- path safety -------------------------------------------------------------------------


def test_safe_model_path(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "p" / "r").mkdir(parents=True)
    assert safe_model_path(models, "p/r/m.gguf") == models.resolve() / "p" / "r" / "m.gguf"
    for bad in ("../x.gguf", "p/../../x", "/etc/passwd", "", "p\\..\\x", "C:/x", "p/\x00"):
        with pytest.raises(InvalidRequest):
            safe_model_path(models, bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "p" / "link").symlink_to(outside)
    with pytest.raises(InvalidRequest, match="leaves"):
        safe_model_path(models, "p/link/m.gguf")
    (models / "p" / "inner").symlink_to(models / "p" / "r")
    assert safe_model_path(models, "p/inner/m.gguf").name == "m.gguf"


def test_symlinked_model_file_and_directory_cycle(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "Linked-Q4_K_M.gguf"
    write_gguf(elsewhere)
    models = tmp_path / "models"
    (models / "p" / "r").mkdir(parents=True)
    (models / "p" / "r" / "Linked-Q4_K_M.gguf").symlink_to(elsewhere)
    (models / "p" / "r" / "loop").symlink_to(models / "p")
    catalog = scan([models])
    assert [r.path for r in catalog.records] == ["p/r/Linked-Q4_K_M.gguf"]
