"""Every GPU figure of docs/perf.md in one run (training step and decoding against transformers); results.json.

`bash benchmarks/gpu.sh` runs it; `--cpu-smoke` runs the same code on tiny shapes on the CPU (the tests do)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from arlm.bench.gpu import decode_figures, environment, run_section, train_figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--cpu-smoke, --out, --batch."""
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (what the tests run)")
    parser.add_argument("--out", default="bench-out", help="folder for results.json")
    parser.add_argument("--batch", type=int, default=32, help="training batch (rows of 1,024 tokens)")


def run(args: argparse.Namespace) -> int:
    """Run both sections (a failing one is recorded, the other still runs); exit 1 when one failed."""
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    if smoke and not args.cpu_smoke:
        print("no CUDA device: running the CPU smoke mode")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    results = {"environment": environment(device), "smoke": smoke}
    print("== training step: arlm vs transformers GPT2LMHeadModel ==", flush=True)
    run_section(results, "train", out, lambda: train_figures(device, smoke, 2 if smoke else args.batch))
    print("== batch-1 greedy decoding: arlm vs transformers generate() ==", flush=True)
    run_section(results, "decode", out, lambda: decode_figures(device, smoke))
    print(f"wrote {out / 'results.json'}")
    failed = [name for name in ("train", "decode") if "error" in results[name]]
    if failed:
        print(f"benchmark sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
