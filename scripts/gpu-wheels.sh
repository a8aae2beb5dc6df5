#!/usr/bin/env bash
# `make gpu-wheels`: fetch, on a machine that reaches a package index, the wheels a GPU
# machine without one may lack, for `make bench-gpu` to install offline. Everything but
# torch (the GPU machine brings its own) and the bot's Discord client, pinned by
# constraints.txt, for CPython 3.12 on x86-64 Linux (PYTHON_VERSION and PLATFORM change
# that). The folder stays under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-gpu-wheels}
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PLATFORM=${PLATFORM:-manylinux_2_28_x86_64}
PACKAGES=(
    diffusers transformers tokenizers safetensors huggingface_hub hf-xet accelerate
    numpy pillow regex PyYAML filelock fsspec tqdm packaging requests certifi idna
    charset-normalizer urllib3 psutil
    aiosqlite redis pydantic pydantic_core pydantic-settings python-dotenv annotated-types
    typing-inspection typing_extensions structlog prometheus_client
)
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp \
    --platform "$PLATFORM" --platform manylinux2014_x86_64 --platform any \
    -c constraints.txt -d "$DEST" "${PACKAGES[@]}" 2> >(grep -v "is ignored" >&2)
du -sh "$DEST"
ls "$DEST"
