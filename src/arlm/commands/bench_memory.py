"""Naive vs SDPA attention: activation memory, peak memory and tokens/s of a training step as context grows."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

from arlm.bench.defaults import LENGTHS
from arlm.errors import ArlmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--lengths, --budget-gb, --out."""
    parser.add_argument("--lengths", help="comma-separated sequence lengths (default 128..8192)")
    parser.add_argument("--budget-gb", type=float, default=4.0, help="budget for the largest-batch column")
    parser.add_argument("--out", default="memory.png", help="PNG to write (numbers go to the same name .json)")


def run(args: argparse.Namespace) -> int:
    """Measure and draw."""
    lengths = parse_lengths(args.lengths) if args.lengths else LENGTHS
    bench_memory_command(lengths=lengths, budget_gb=args.budget_gb, out=args.out)
    return 0


def parse_lengths(text: str) -> tuple[int, ...]:
    """--lengths: comma-separated whole numbers (bench_memory_command checks them)."""
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ArlmError(f"--lengths takes comma-separated whole numbers (e.g. 128,256,512), got {text!r}") from None


def bench_memory_command(
    *,
    lengths: tuple[int, ...] = LENGTHS,
    budget_gb: float = 4.0,
    device: str = "auto",
    out: str = "memory.png",
    limit_gb: float = 12.0,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure both backends over the lengths, print the table and exponents, write the plot and a JSON."""
    from arlm.bench.memory import run_memory_bench  # lazy: kept out of --help
    from arlm.commands.plots import figure_path, plot_memory  # lazy: kept out of --help

    if min(lengths, default=0) < 2 or len(set(lengths)) < 2:
        shown = ",".join(map(str, lengths))
        raise ArlmError(
            f"--lengths needs two different lengths of 2 or more (a slope is fitted over them), got {shown}"
        )
    if not 0 < budget_gb < math.inf:
        raise ArlmError(f"--budget-gb must be a number of GB above 0, got {budget_gb:g}")
    figure_path(out, numbers=True)
    result = run_memory_bench(lengths=lengths, budget_gb=budget_gb, device=device, limit_gb=limit_gb, log=log)
    plot_memory(result, out)
    Path(out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}, {Path(out).with_suffix('.json')}")
    return result
