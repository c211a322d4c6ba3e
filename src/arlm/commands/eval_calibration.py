"""Expected calibration error and a reliability diagram of next-token predictions, for one or more runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.options import add_device_argument, add_dtype_argument, check_batches, provenance
from arlm.commands.runs import run_label
from arlm.errors import ArlmError
from arlm.evaluation.defaults import N_BINS, SPLIT_BLOCK

if TYPE_CHECKING:
    from arlm.evaluation.calibration import CalibrationResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN..., --split, --data, --batches, --bins, --out, --device, --dtype."""
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--data", help="prepared data folder (default: the one each run was trained on)")
    parser.add_argument("--batches", type=int, default=0, help="limit to this many batches (0: whole split)")
    parser.add_argument("--bins", type=int, default=N_BINS, help="equal-width confidence bins")
    parser.add_argument("--out", default="calibration.png", help="PNG to write (numbers go to the same name .json)")
    add_device_argument(parser)
    add_dtype_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, draw the diagram."""
    calibration_command(
        args.runs, split=args.split, batches=args.batches, out=args.out, n_bins=args.bins, data_dir=args.data,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    return 0


def calibration_command(
    run_refs: list[str],
    *,
    split: str = "val",
    batches: int = 0,
    out: str | Path = "calibration.png",
    n_bins: int = N_BINS,
    data_dir: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, CalibrationResult]:
    """Measure the calibration of runs on a split; print a table, write the diagram (out) and out.json."""
    from arlm.commands.plots import figure_path, plot_reliability  # lazy: kept out of --help
    from arlm.evaluation.calibration import calibration, format_table  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device, run_data  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_scoring  # lazy: kept out of --help

    if not run_refs:
        raise ArlmError("name at least one run or checkpoint to measure")
    check_batches(batches)
    out = figure_path(out, numbers=True)
    results: dict[str, CalibrationResult] = {}
    measured: dict[str, dict] = {}
    for ref in run_refs:
        loaded = load_model(ref, device=pick_device(device, dtype), dtype=dtype)
        optimize_for_scoring(loaded.model)  # 16-bit: on the kernels generate samples with
        config = loaded.config
        data = run_data(loaded, split, data_dir)
        block = min(config.model.block_size, SPLIT_BLOCK)  # (as eval perplexity scores a split)
        sampler = data.sampler(split, config.data, block, config.train.seed)
        measured[run_label(ref, results)] = {**provenance(loaded), "data": str(data.directory), "block": block}
        results[run_label(ref, results)] = calibration(
            loaded.model, sampler.eval_batches(config.train.batch_size, batches), n_bins
        )
    log(f"calibration on the {split} split ({n_bins} bins):")
    log(format_table(results))
    plot_reliability(results, out)
    record = {"split": split, "batches": batches, "runs": dict(zip(results, run_refs)), "measured": measured}
    record["results"] = {k: r.as_dict() for k, r in results.items()}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}, {out.with_suffix('.json')}")
    return results
