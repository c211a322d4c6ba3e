"""Draw training loss against tokens for one or more runs in one figure (and gradient norms if logged)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from arlm.commands.runs import run_label
from arlm.errors import ArlmError
from arlm.training.logging import read_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN..., --out, --grad-norms."""
    parser.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    parser.add_argument("--out", default="loss.png", help="PNG to write")
    parser.add_argument("--grad-norms", action="store_true", help="also draw gradient norms (train.grad_norms)")


def run(args: argparse.Namespace) -> int:
    """Draw the figures."""
    plot_command(args.runs, args.out, grad_norms=args.grad_norms)
    return 0


def metrics_path(run: str | Path) -> Path:
    """metrics.jsonl of a run folder (or the file itself)."""
    path = Path(run)
    file = path if path.suffix == ".jsonl" else path / "metrics.jsonl"
    if not file.exists():
        raise ArlmError(f"no metrics.jsonl in {run}; give run folders written by arlm train")
    return file


def plot_command(
    runs: list[str], out: str, *, grad_norms: bool = False, log: Callable[[str], None] = print
) -> list[Path]:
    """Write the loss figure (and a gradient-norm figure per run when asked)."""
    from arlm.commands.plots import figure_path, plot_grad_norms, plot_loss  # lazy: kept out of --help

    out_path = figure_path(out)
    records = {}
    for run in runs:
        file = metrics_path(run)
        named = file.parent if file.name == "metrics.jsonl" else file.with_suffix("")
        logged = read_metrics(file)
        if not any(r.get("train_nll") is not None or r.get("val_loss") is not None for r in logged):
            raise ArlmError(f"{file} holds no loss yet (a run stopped before its first log line); nothing to plot")
        records[run_label(str(named), records)] = logged
    if grad_norms:  # checked before any figure is written
        for label, recs in records.items():
            if not any(k.startswith("gradnorm/") for r in recs for k in r):
                raise ArlmError(f"run {label} logged no gradient norms; train with --train.grad_norms true")
    written = [plot_loss(records, out_path)]
    if grad_norms:
        for label, recs in records.items():
            name = f"{out_path.stem}-gradnorms-{label}{out_path.suffix}"
            written.append(plot_grad_norms(recs, out_path.with_name(name)))
    for path in written:
        log(f"wrote {path}")
    return written
