"""Train a preset with label smoothing 0 and 0.1 (otherwise identical) and compare their calibration."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.eval_calibration import calibration_command
from arlm.commands.runs import STUDY_OVERRIDES, train_variants
from arlm.config import DEFAULT_PRESET, build_config
from arlm.evaluation.defaults import N_BINS

if TYPE_CHECKING:
    from arlm.evaluation.calibration import CalibrationResult

CONFIG_OVERRIDES = True
STUDY_SMOOTHING = (0.0, 0.1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --out, --runs-dir."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path (+ overrides)")
    parser.add_argument(
        "--out",
        default="docs/studies/calibration",
        help="folder for the report, figure and numbers (default docs/studies/calibration)",
    )
    parser.add_argument("--runs-dir", help="where the runs are trained (default: <out>/runs)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the runs an earlier study left in the runs dir"
    )


def run(args: argparse.Namespace) -> int:
    """Train both runs, measure, write the report."""
    calibration_study(
        args.out, preset=args.preset, overrides=args.overrides, runs_dir=args.runs_dir, overwrite=args.overwrite
    )
    return 0


def calibration_study(
    out_dir: str | Path,
    *,
    preset: str = "quickstart",
    overrides: Sequence[str] = (),
    runs_dir: str | Path | None = None,
    overwrite: bool = False,
    smoothing: Sequence[float] = STUDY_SMOOTHING,
    split: str = "val",
    n_bins: int = N_BINS,
    log: Callable[[str], None] = print,
) -> dict[str, CalibrationResult]:
    """Train the preset once per label-smoothing value (otherwise identical), measure calibration on the
    split, and write calibration.png, calibration.json and report.md to out_dir."""
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir else out_dir / "runs"
    all_overrides = [*STUDY_OVERRIDES, *overrides]
    variants = {f"label-smoothing-{s:g}": ["--train.label_smoothing", str(s)] for s in smoothing}
    start = time.perf_counter()
    trained = train_variants(preset, variants, runs_dir, all_overrides, log, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = calibration_command(
        [str(path) for path, _ in trained.values()],
        split=split,
        out=out_dir / "calibration.png",
        n_bins=n_bins,
        log=log,
    )
    total = time.perf_counter() - start
    config = build_config(preset, all_overrides)
    record = json.loads((out_dir / "calibration.json").read_text(encoding="utf-8"))
    record.update(
        preset=preset,
        overrides=all_overrides,
        label_smoothing=list(smoothing),
        train_seconds={k: round(s, 1) for k, (_, s) in trained.items()},
        total_seconds=round(total, 1),
        max_steps=config.train.max_steps,
    )
    record["runs"] = {k: str(p) for k, (p, _) in trained.items()}
    (out_dir / "calibration.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    report = _study_report(results, record, smoothing)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    log(f"wrote {out_dir / 'report.md'}")
    return results


def _study_report(results: dict[str, CalibrationResult], record: dict, smoothing: Sequence[float]) -> str:
    """The markdown summary of a calibration study."""
    rows = [
        "| label smoothing | ECE | MCE | mean confidence | accuracy | conf - acc | NLL | Brier | tokens | train s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (label, r) in zip(smoothing, results.items()):
        rows.append(
            f"| {s:g} | {r.ece:.4f} | {r.mce:.4f} | {r.confidence:.4f} | {r.accuracy:.4f} | "
            f"{r.overconfidence:+.4f} | {r.nll:.4f} | {r.brier:.4f} | {r.tokens:,} | {record['train_seconds'][label]} |"
        )
    ordered = sorted(results.items(), key=lambda kv: kv[1].ece)
    reading = (
        f"Lowest ECE: {ordered[0][0]} ({ordered[0][1].ece:.4f}); highest: {ordered[-1][0]} "
        f"({ordered[-1][1].ece:.4f}). A positive conf - acc means over-confident, negative under-confident."
    )
    return "\n".join(
        [
            "# Calibration study: label smoothing",
            "",
            f"Preset `{record['preset']}` trained {record['max_steps']} steps once per label-smoothing value, "
            f"otherwise identical (overrides: `{' '.join(record['overrides'])}`); calibration of the top-1 "
            f"next-token predictions on the {record['split']} split, {results[ordered[0][0]].n_bins} "
            "equal-width bins.",
            "",
            *rows,
            "",
            reading,
            "",
            f"Total time {record['total_seconds']} s. Figure: `calibration.png`; numbers: `calibration.json`.",
            "",
        ]
    )
