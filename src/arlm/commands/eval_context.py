"""Validation loss by position in the context, for one or more runs (one figure)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from arlm.commands.options import add_device_argument, add_dtype_argument, check_batches, provenance
from arlm.commands.runs import run_label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN..., --split, --data, --batches, --out, --device, --dtype."""
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--data", help="prepared data folder (default: the one each run was trained on)")
    parser.add_argument("--batches", type=int, default=0, help="limit to this many batches (0: whole split)")
    parser.add_argument("--out", default="context.png", help="PNG to write (numbers go to the same name .json)")
    add_device_argument(parser)
    add_dtype_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Measure and draw."""
    context_command(
        args.runs, split=args.split, data_dir=args.data, batches=args.batches, out=args.out, device=args.device,
        dtype=args.dtype,
    )  # fmt: skip
    return 0


def context_command(
    run_refs: list[str],
    *,
    split: str = "val",
    data_dir: str | None = None,
    batches: int = 0,
    out: str = "context.png",
    device: str = "auto",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Loss by position for each run (on the split of its own prepared data, or data_dir's), one PNG and a JSON."""
    from arlm.commands.plots import figure_path, plot_lines  # lazy: kept out of --help
    from arlm.evaluation.context import per_position_loss  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device, run_data  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_scoring  # lazy: kept out of --help

    check_batches(batches)
    figure_path(out, numbers=True)
    curves, measured = {}, {}
    for ref in run_refs:
        loaded = load_model(ref, device=pick_device(device, dtype), dtype=dtype)
        optimize_for_scoring(loaded.model)  # 16-bit: on the kernels generate samples with
        config = loaded.config
        data = run_data(loaded, split, data_dir)
        sampler = data.sampler(split, config.data, config.model.block_size, config.train.seed)
        loss, _ = per_position_loss(loaded.model, sampler.eval_batches(config.train.batch_size, batches))
        label = run_label(ref, curves)
        curves[label] = loss.tolist()
        measured[label] = {**provenance(loaded), "data": str(data.directory), "ref": str(ref)}
        marks = [p for p in (0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023) if p < len(loss)]
        shown = ", ".join(f"{p + 1}: {loss[p]:.3f}" for p in marks)  # (position p predicts from p + 1 tokens)
        log(f"{label} (context {len(loss)}), loss after N tokens seen: {shown}; mean {loss.mean():.3f}")
    series = {label: [(i + 1, v) for i, v in enumerate(c)] for label, c in curves.items()}
    plot_lines(
        series,
        out,
        xlabel="tokens seen (the predicted token's position in the context)",
        ylabel=f"{split} loss",
        title="loss by position in the context",
        logx=True,
    )
    record = {"split": split, "batches": batches, "measured": measured, "loss_by_position": curves}
    Path(out).with_suffix(".json").write_text(json.dumps(record) + "\n")
    log(f"wrote {out} and {Path(out).with_suffix('.json')}")
    return curves
