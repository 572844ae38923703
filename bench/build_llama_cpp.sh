#!/usr/bin/env bash
# Build the llama.cpp tools picovlm's GGUF export is checked with: llama-mtmd-cli (a GGUF language model + an
# mmproj file, one image, one answer), llama-server (the same behind an OpenAI-style HTTP API) and
# llama-tokenize. From llama-cpp-python's source release, whose vendor/llama.cpp is a complete llama.cpp
# tree (converter, tools/mtmd); CPU only, no curl.
#
#   bench/build_llama_cpp.sh [--patched] [--sdist FILE] [--jobs N] [DIR]
#
#   DIR        where the source is unpacked and built (default ~/.cache/picovlm/llama.cpp); the tools land in
#              DIR/build/bin (DIR/build-patched/bin with --patched): point PICOVLM_LLAMA_CPP there
#   --patched  apply bench/llama_cpp_idefics3_unsplit.patch: an image that fits one tile is sent once, as
#              transformers' Idefics3Processor sends it, instead of as a 1x1 tile plus the overview, and
#              the "\n\n" token the tiled layout needs is not looked up. Stock llama.cpp cannot answer as
#              picovlm does without it (docs/deploy.md, "GGUF / llama.cpp").
#   --sdist    llama_cpp_python-*.tar.gz to build from (default: `pip download` of LLAMA_CPP_PYTHON_VERSION)
#
# Takes ~6 min on 2 cores. Needs cmake, ninja and a C++17 compiler.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATCHED=0
SDIST=""
JOBS="$(nproc)"
DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --patched) PATCHED=1 ;;
    --sdist) SDIST="$2"; shift ;;
    --jobs) JOBS="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) DIR="$1" ;;
  esac
  shift
done
DIR="${DIR:-$HOME/.cache/picovlm/llama.cpp}"
mkdir -p "$DIR"

if [[ -z "$SDIST" ]]; then
  SDIST="$(ls "$DIR"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
  if [[ -z "$SDIST" ]]; then
    python -m pip download --no-deps --no-binary :all: --dest "$DIR" "llama-cpp-python==$VERSION"
    SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"
  fi
fi

NAME="$(basename "$SDIST" .tar.gz)"
SRC="$DIR/$NAME/vendor/llama.cpp"
BUILD="$DIR/build"
if [[ "$PATCHED" == 1 ]]; then
  # a separate copy, so the stock tree (and its build) stays as released
  if [[ ! -d "$DIR/patched-src" ]]; then
    [[ -d "$SRC" ]] || tar -xzf "$SDIST" -C "$DIR"
    cp -r "$SRC" "$DIR/patched-src"
    patch -d "$DIR/patched-src" -p1 < "$HERE/llama_cpp_idefics3_unsplit.patch"
  fi
  SRC="$DIR/patched-src"
  BUILD="$DIR/build-patched"
elif [[ ! -d "$SRC" ]]; then
  tar -xzf "$SDIST" -C "$DIR"
fi

cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
cmake --build "$BUILD" --target llama-mtmd-cli llama-server llama-tokenize -j "$JOBS"
echo "built: $BUILD/bin (export PICOVLM_LLAMA_CPP=$BUILD/bin)"
