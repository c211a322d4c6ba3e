#!/usr/bin/env bash
# Every GPU figure of docs/perf.md in one run of a few minutes:
#   bash benchmarks/gpu.sh --out results/        (on a CUDA machine, after `make install-dev`)
#   bash benchmarks/gpu.sh --cpu-smoke           (tiny shapes on the CPU; the test suite runs this)
# Then the GPU tests: .venv/bin/python -m pytest -m gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
"$PYTHON" -m arlm bench gpu "$@"
if [[ " $* " != *" --cpu-smoke "* ]] && "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$PYTHON" -m pytest -q -m gpu tests
fi
