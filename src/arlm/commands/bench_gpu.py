"""Every GPU figure of docs/perf.md in one run (training step and decoding against transformers, decoding per dtype);
results.json.

`bash benchmarks/gpu.sh` runs it; `--cpu-smoke` runs the same code on tiny shapes on the CPU (the tests do)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arlm.errors import ArlmError, optional_package

SECTIONS = ("train", "decode", "dtypes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--cpu-smoke, --out, --batch, --sections, --untuned, --variants."""
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (what the tests run)")
    parser.add_argument("--out", default="bench-out", help="folder for results.json")
    parser.add_argument("--batch", type=int, default=32, help="training batch (rows of 1,024 tokens)")
    parser.add_argument(
        "--untuned", action="store_true", help="dtypes: also each dtype compiled without coordinate descent tuning"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="dtypes: only these variants, ';'-separated names as the table prints them, e.g. "
        "'bfloat16;bfloat16, one graph;int8, one graph' (default: all)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)"
    )


def variant_names(text: str) -> tuple[str, ...]:
    """--variants' names: ';'-separated (the names hold commas)."""
    return tuple(name.strip() for name in text.split(";") if name.strip())


def run(args: argparse.Namespace) -> int:
    """Run the sections asked for (a failing one is recorded, the others still run); exit 1 when one failed."""
    import torch  # lazy: kept out of --help

    from arlm.bench.gpu import (  # lazy: kept out of --help
        decode_figures,
        dtype_figures,
        dtype_variants,
        environment,
        figure_dtypes,
        pick_variants,
        run_section,
        train_figures,
    )

    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise ArlmError(f"--sections takes names of {', '.join(SECTIONS)}; got {args.sections!r}")
    if {"train", "decode"} & set(sections):
        optional_package("transformers", "arlm bench gpu (its train and decode sections)", "hf")
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    if smoke and not args.cpu_smoke:
        print("no CUDA device: running the CPU smoke mode")
    only = variant_names(args.variants)
    pick_variants(dtype_variants(device, figure_dtypes(smoke), args.untuned), only)  # a wrong name: refused now
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    results = {"environment": environment(device), "smoke": smoke}
    batch = 2 if smoke else args.batch
    runs = {
        "train": ("training step: arlm vs transformers GPT2LMHeadModel", lambda: train_figures(device, smoke, batch)),
        "decode": ("batch-1 greedy decoding: arlm vs transformers generate()", lambda: decode_figures(device, smoke)),
        "dtypes": (
            "batch-1 greedy decoding, compiled, per dtype, with a profile",
            lambda: dtype_figures(device, smoke, args.untuned, only),
        ),
    }
    for name in sections:
        print(f"== {runs[name][0]} ==", flush=True)
        run_section(results, name, out, runs[name][1])
    print(f"wrote {out / 'results.json'}")
    failed = [name for name in sections if "error" in results[name]]
    if failed:
        print(f"benchmark sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
