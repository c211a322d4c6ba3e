"""Per-position loss and accuracy under teacher forcing vs free running (the model's own prefix)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.options import add_device_argument, add_dtype_argument, provenance
from arlm.commands.runs import run_label
from arlm.errors import ArlmError

if TYPE_CHECKING:
    from arlm.evaluation.exposure_bias import ExposureBiasResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN..., --split, --data, --prompt-len, --length, --sequences, --out, --device, --dtype."""
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--data", help="prepared data folder (default: the one each run was trained on)")
    parser.add_argument("--prompt-len", type=int, help="gold prompt tokens, at least 1 (default: context / 4)")
    parser.add_argument("--length", type=int, help="positions measured after it, at least 1 (default: the rest)")
    parser.add_argument("--sequences", type=int, default=256, help="held-out sequences")
    parser.add_argument("--out", default="exposure_bias.png", help="PNG to write (numbers go to the same name .json)")
    add_device_argument(parser)
    add_dtype_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Measure, print the summary, draw the curves."""
    exposure_bias_command(
        args.runs, prompt_len=args.prompt_len, length=args.length, n_sequences=args.sequences, split=args.split,
        out=args.out, data_dir=args.data, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    return 0


def exposure_bias_command(
    run_refs: list[str],
    *,
    prompt_len: int | None = None,
    length: int | None = None,
    n_sequences: int = 256,
    split: str = "val",
    out: str | Path = "exposure_bias.png",
    batch_size: int = 64,
    data_dir: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, ExposureBiasResult]:
    """Measure exposure bias of runs on held-out sequences; print the summary, write the figure and out.json.
    prompt_len / length None: a quarter of the context as prompt, the rest as continuation."""
    from arlm.commands.plots import figure_path, plot_exposure_bias  # lazy: kept out of --help
    from arlm.evaluation.exposure_bias import (  # lazy: kept out of --help
        default_lengths,
        exposure_bias,
        format_summary,
        held_out_sequences,
    )
    from arlm.interop.loading import load_model, pick_device, run_data  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_scoring  # lazy: kept out of --help

    if not run_refs:
        raise ArlmError("name at least one run or checkpoint to measure")
    for flag, value in (("--prompt-len", prompt_len), ("--length", length)):
        if value is not None and value < 1:
            raise ArlmError(f"{flag} must be at least 1, got {value} (leave it out for the default)")
    out = figure_path(out, numbers=True)
    results: dict[str, ExposureBiasResult] = {}
    measured: dict[str, dict] = {}
    models = [load_model(ref, device=pick_device(device, dtype), dtype=dtype) for ref in run_refs]
    # one prompt and length for every run (the shortest context's default), so that their rows compare
    P, L = default_lengths(min(m.config.model.block_size for m in models), prompt_len, length)
    for ref, loaded in zip(run_refs, models):
        optimize_for_scoring(loaded.model)  # 16-bit: on the kernels generate samples with
        data = run_data(loaded, split, data_dir)
        sequences = held_out_sequences(data.tokens(split), n_sequences, P + L)
        if len(sequences) < n_sequences:
            log(f"note: {len(sequences)} {split} sequences, not {n_sequences}: no more of {P + L} tokens fit apart")
        measured[run_label(ref, results)] = {**provenance(loaded), "data": str(data.directory)}
        results[run_label(ref, results)] = exposure_bias(loaded.model, sequences, P, L, batch_size=batch_size)
    first = next(iter(results.values()))
    log(
        f"exposure bias on {first.sequences} {split} sequences: prompt {first.prompt_len} tokens, "
        f"{first.length} positions (gap = free-running minus teacher-forced loss, nats)"
    )
    log(format_summary(results))
    plot_exposure_bias(results, out)
    record = {"split": split, "runs": dict(zip(results, run_refs)), "measured": measured}
    record["results"] = {k: r.as_dict() for k, r in results.items()}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}, {out.with_suffix('.json')}")
    return results
