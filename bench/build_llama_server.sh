#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp source that ships inside
# the llama-cpp-python sdist of the SAME version as the one installed in the
# virtualenv, so the baseline runs the same llama.cpp as our daemon.
#
# Usage:  bench/build_llama_server.sh [PYTHON]
#   PYTHON defaults to .venv/bin/python (the project's virtualenv).
#
# Everything goes under bench/.cache/ (git-ignored):
#   bench/.cache/llama_cpp_python-<ver>.tar.gz     the sdist
#   bench/.cache/llama-cpp-python-<ver>/           its extracted source
#   bench/.cache/llama-cpp-python-<ver>/build/     the CMake build folder
#   bench/.cache/llama-server-<ver>                 the cached binary
# A cached binary is reused; delete it to rebuild. Prints the binary's path
# on the last line of stdout; exits non-zero when it cannot be built.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python="${1:-$repo/.venv/bin/python}"
cache="$here/.cache"
mkdir -p "$cache"
# Keep git and ruff out of the sdist and the build, even before .gitignore names bench/.cache/.
[[ -f "$cache/.gitignore" ]] || printf '*\n' > "$cache/.gitignore"

version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
binary="$cache/llama-server-$version"
if [[ -x "$binary" ]]; then
    echo "cached: $binary" >&2
    echo "$binary"
    exit 0
fi

for tool in cmake c++; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

sdist="$cache/llama_cpp_python-$version.tar.gz"
if [[ ! -f "$sdist" ]]; then
    echo "downloading llama-cpp-python==$version sdist ..." >&2
    "$python" -m pip download --no-binary :all: --no-deps \
        "llama-cpp-python==$version" -d "$cache" >&2
fi
[[ -f "$sdist" ]] || { echo "sdist not found: $sdist" >&2; exit 3; }

src="$cache/llama_cpp_python-$version"
if [[ ! -d "$src/vendor/llama.cpp" ]]; then
    echo "extracting $sdist ..." >&2
    tar -xzf "$sdist" -C "$cache"
fi
# The sdist's top folder is llama_cpp_python-<ver>.
[[ -d "$src/vendor/llama.cpp" ]] || { echo "no vendor/llama.cpp in $src" >&2; exit 3; }

jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
start=$(date +%s)
echo "configuring llama.cpp (vendor of llama-cpp-python $version) ..." >&2
cmake -S "$src/vendor/llama.cpp" -B "$src/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2
echo "building llama-server with -j $jobs ..." >&2
cmake --build "$src/build" --target llama-server -j "$jobs" >&2
end=$(date +%s)

built="$src/build/bin/llama-server"
[[ -x "$built" ]] || { echo "build finished but $built is missing" >&2; exit 4; }
cp "$built" "$binary"
echo "built llama-server in $((end - start)) s" >&2
echo "$((end - start))" > "$binary.build_seconds"
echo "$binary"
