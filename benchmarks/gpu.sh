#!/usr/bin/env bash
# Every GPU figure of docs/perf.md in one run of a few minutes:
#   bash benchmarks/gpu.sh --out results/        (on a CUDA machine, after `make install-dev`, or with that
#                                                 machine's own python3 holding torch: arlm runs from src/)
#   bash benchmarks/gpu.sh --cpu-smoke           (tiny shapes on the CPU; the test suite runs this)
#   bash benchmarks/gpu.sh --sections dtypes     (some of train, decode, dtypes: `arlm bench gpu --help`)
# Then the GPU tests (the files that hold them, so that no optional package is needed to collect them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
export HF_HUB_OFFLINE=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -m arlm bench gpu "$@"
if [[ " $* " != *" --cpu-smoke "* ]] && "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$PYTHON" -m pytest -q -m gpu $(grep -rl "mark.gpu" tests --include "*.py")
fi
