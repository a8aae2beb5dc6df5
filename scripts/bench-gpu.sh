#!/usr/bin/env bash
# `make bench-gpu [OUT=folder]`: the prepared GPU benchmark, on a machine that may reach
# no package index. It uses the machine's own torch (2.4 or later, any CUDA), installs
# into .gpu-site only what that Python lacks, from the wheels `make gpu-wheels` fetched
# (WHEELS, default gpu-wheels/), and runs the project from this source tree:
# python -m backend.bench.gpu OUT, which prints a table and writes gpu-bench.json and
# gpu-bench.md into OUT. Extra arguments go to it (--smoke: tiny models, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-bench}
shift || true
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-gpu-wheels}
SITE=.gpu-site
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "bench-gpu: $PYTHON has no torch; install the machine's CUDA build first" >&2
    exit 2
fi
if [ -d "$WHEELS" ]; then
    "$PYTHON" scripts/install_missing_wheels.py "$WHEELS" "$SITE"
fi
export PYTHONPATH="$PWD/$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m backend.bench.gpu "$OUT" "$@"
