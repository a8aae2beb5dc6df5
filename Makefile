# One place for the project's commands; see README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test lint format demo clean gpu-wheels bench-gpu

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The built-in shapes model draws this; real models are configured as README.md says.
demo: $(STAMP)
	$(BIN)/imagine generate "a yellow star on a blue background --seed 7"

# The GPU benchmark runs on a machine with its own torch and maybe no package index:
# fetch the other wheels here first (under 64 MiB), copy the tree with gpu-wheels/ over,
# then run `make bench-gpu OUT=folder` there. See scripts/bench-gpu.sh.
gpu-wheels:
	PYTHON=$(BIN)/python scripts/gpu-wheels.sh gpu-wheels

bench-gpu:
	scripts/bench-gpu.sh $(or $(OUT),gpu-bench)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
