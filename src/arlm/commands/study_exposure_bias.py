"""Train a preset plainly and with scheduled sampling, and compare their exposure-bias curves."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.eval_exposure_bias import exposure_bias_command
from arlm.commands.runs import STUDY_OVERRIDES, train_variants
from arlm.config import DEFAULT_PRESET, build_config
from arlm.errors import ArlmError

if TYPE_CHECKING:
    from arlm.evaluation.exposure_bias import ExposureBiasResult

CONFIG_OVERRIDES = True
STUDY_SCHEDULED_SAMPLING = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --out, --runs-dir, --scheduled-sampling, --sequences."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path (+ overrides)")
    parser.add_argument(
        "--out",
        default="docs/studies/exposure-bias",
        help="folder for the report, figure and numbers (default docs/studies/exposure-bias)",
    )
    parser.add_argument("--runs-dir", help="where the runs are trained (default: <out>/runs)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the runs an earlier study left in the runs dir"
    )
    parser.add_argument(
        "--scheduled-sampling",
        type=float,
        default=STUDY_SCHEDULED_SAMPLING,
        help="final probability of own tokens",
    )
    parser.add_argument("--sequences", type=int, default=256, help="held-out sequences measured")


def run(args: argparse.Namespace) -> int:
    """Train both runs, measure, write the report."""
    exposure_bias_study(
        args.out, preset=args.preset, overrides=args.overrides, runs_dir=args.runs_dir, overwrite=args.overwrite,
        scheduled_sampling=args.scheduled_sampling, n_sequences=args.sequences,
    )  # fmt: skip
    return 0


def exposure_bias_study(
    out_dir: str | Path,
    *,
    preset: str = "quickstart",
    overrides: Sequence[str] = (),
    runs_dir: str | Path | None = None,
    overwrite: bool = False,
    scheduled_sampling: float = STUDY_SCHEDULED_SAMPLING,
    prompt_len: int | None = None,
    length: int | None = None,
    n_sequences: int = 256,
    split: str = "val",
    log: Callable[[str], None] = print,
) -> dict[str, ExposureBiasResult]:
    """Train the preset plainly and with scheduled sampling (ramped up over the first half of the steps),
    measure exposure bias of both, and write exposure_bias.png, exposure_bias.json and report.md."""
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir else out_dir / "runs"
    all_overrides = [*STUDY_OVERRIDES, *overrides]
    steps = build_config(preset, all_overrides).train.max_steps
    warmup = max(steps // 2, 1)
    variants = {
        "plain": [],
        "scheduled-sampling": [
            "--train.scheduled_sampling", str(scheduled_sampling), "--train.scheduled_sampling_warmup", str(warmup)
        ],
    }  # fmt: skip
    for extra in variants.values():  # each run's settings refused before any run trains
        build_config(preset, [*all_overrides, *extra])
    if n_sequences < 1:
        raise ArlmError(f"--sequences must be >= 1, got {n_sequences}")
    start = time.perf_counter()
    trained = train_variants(preset, variants, runs_dir, all_overrides, log, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = [str(path) for path, _ in trained.values()]
    measure_start = time.perf_counter()
    results = exposure_bias_command(
        refs, prompt_len=prompt_len, length=length, n_sequences=n_sequences, split=split,
        out=out_dir / "exposure_bias.png", log=log,
    )  # fmt: skip
    record = json.loads((out_dir / "exposure_bias.json").read_text(encoding="utf-8"))
    record.update(
        preset=preset,
        overrides=all_overrides,
        max_steps=steps,
        scheduled_sampling=scheduled_sampling,
        scheduled_sampling_warmup=warmup,
        train_seconds={k: round(s, 1) for k, (_, s) in trained.items()},
        measure_seconds=round(time.perf_counter() - measure_start, 1),
        total_seconds=round(time.perf_counter() - start, 1),
    )
    (out_dir / "exposure_bias.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_study_report(results, record), encoding="utf-8")
    log(f"wrote {out_dir / 'report.md'}")
    return results


def _study_report(results: dict[str, ExposureBiasResult], record: dict) -> str:
    """The markdown summary of an exposure-bias study."""
    first = next(iter(results.values()))
    shown = list(first.gap_at())
    rows = [
        "| run | TF loss | FR loss | TF acc | FR acc | "
        + " | ".join(f"gap@{j}" for j in shown)
        + " | gap slope (nats/position) | train s |",
        "|---|" + "---:|" * (5 + len(shown)) + "---:|",
    ]
    for label, r in results.items():
        s = r.summary()
        gaps = " | ".join(f"{r.gap[j]:.3f} ± {r.gap_se[j]:.3f}" for j in shown)
        rows.append(
            f"| {label} | {s['teacher_forced_loss']:.3f} | {s['free_running_loss']:.3f} | "
            f"{s['teacher_forced_accuracy']:.3f} | {s['free_running_accuracy']:.3f} | {gaps} | "
            f"{r.gap_slope:.4f} | {record['train_seconds'][label]} |"
        )
    return "\n".join(
        [
            "# Exposure-bias study: scheduled sampling",
            "",
            f"Preset `{record['preset']}` trained {record['max_steps']} steps twice, otherwise identical "
            f"(overrides: `{' '.join(record['overrides'])}`): plain teacher forcing, and scheduled sampling "
            f"with final probability {record['scheduled_sampling']} reached linearly over the first "
            f"{record['scheduled_sampling_warmup']} steps. Measured on {first.sequences} sequences of the "
            f"{record['split']} split: a gold prompt of {first.prompt_len} tokens, then {first.length} "
            "positions. TF: teacher forcing (gold prefix); FR: free running (the model's own greedy prefix); "
            "losses and accuracies are of the gold token, means over all positions; gap@j is FR minus TF "
            "loss at position j (± one standard error).",
            "",
            *rows,
            "",
            f"Total time {record['total_seconds']} s (measurement {record['measure_seconds']} s). "
            "Figure: `exposure_bias.png`; curves: `exposure_bias.json`.",
            "",
        ]
    )
