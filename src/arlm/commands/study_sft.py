"""Instruction fine-tuning, measured: LoRA vs full fine-tuning of a preset's base model on the built-in tasks.

`arlm study sft` (preset smollm2-sft) writes the tasks as chat data (held-out items kept apart), measures the base
model's zero-shot accuracy on the held-out items, trains the preset with LoRA and with full fine-tuning (each in
its own process, so its peak memory is its own), and reports accuracy with 95% Wilson intervals, wall time, peak
memory, checkpoint size and optimizer bytes (sft.md, sft.json)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors import safe_open

from arlm.commands.runs import refuse_earlier_runs, refuse_placement
from arlm.config import build_config
from arlm.errors import ArlmError

CONFIG_OVERRIDES = True
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4}
FULL_LR = "5e-5"  # full fine-tuning moves every weight: a learning rate ~20x below LoRA's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --out, --tasks, --limit, --full-lr, --overwrite."""
    parser.add_argument("--preset", default="smollm2-sft", help="named preset or YAML path (+ overrides)")
    parser.add_argument(
        "--out", default="docs/studies/sft", help="folder for the data, runs and report (default docs/studies/sft)"
    )
    parser.add_argument("--tasks", help="comma-separated built-in tasks (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many held-out items per task")
    parser.add_argument("--full-lr", default=FULL_LR, help=f"train.lr of full fine-tuning (default {FULL_LR})")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the runs an earlier study left in OUT/runs/lora and full"
    )


def run(args: argparse.Namespace) -> int:
    """Run the study and print its table."""
    tasks = args.tasks.split(",") if args.tasks else None
    sft_study(
        args.out,
        preset=args.preset,
        overrides=args.overrides,
        tasks=tasks,
        limit=args.limit,
        full_lr=args.full_lr,
        overwrite=args.overwrite,
    )
    return 0


def sft_study(
    out_dir: str | Path,
    *,
    preset: str = "smollm2-sft",
    overrides: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    full_lr: str = FULL_LR,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Before, LoRA and full fine-tuning on the held-out items; writes sft.json and sft.md into out_dir."""
    from arlm.evaluation.instruct import (  # lazy: kept out of --help
        instruct_accuracy,
        instruction_split,
        write_chat_jsonl,
    )
    from arlm.interop.loading import load_model  # lazy: kept out of --help

    out = Path(out_dir)
    where = "the study writes its data and runs in --out (OUT/sft.jsonl, OUT/data, OUT/runs/NAME)"
    refuse_placement(overrides, where, placed=("train.out_dir", "data.prepared_dir", "data.source"))
    config = build_config(preset, list(overrides))
    if not config.train.lora.rank:
        raise ArlmError(f"preset {preset} trains no LoRA adapters; set train.lora.rank")
    variants = {"lora": [], "full": ["--train.lora.rank", "0", "--train.lr", full_lr, "--train.min_lr", "0"]}
    for extra in variants.values():  # each run's settings refused before any work
        build_config(preset, [*overrides, *extra])
    if limit is not None and limit < 1:
        raise ArlmError(f"--limit must be >= 1 held-out items per task (leave it out for all), got {limit}")
    refuse_earlier_runs([out / "runs" / name for name in variants], overwrite, "--out")  # before anything is written
    train, held = instruction_split(tasks, limit=limit)
    source = write_chat_jsonl(out / "sft.jsonl", train)
    log(f"{len(train)} training conversations in {source}; {len(held)} held-out items")
    base = load_model(config.train.init)
    rows = {"before": {"accuracy": instruct_accuracy(base.model, base.tokenizer, held)}}
    del base
    shared = [*overrides, "--data.source", str(source), "--data.prepared_dir", str(out / "data")]
    for name, extra in variants.items():
        run_dir = out / "runs" / name
        log(f"=== training {name}")
        rows[name] = train_measured(preset, [*shared, *extra, "--train.out_dir", str(run_dir)], overwrite)
        loaded = load_model(run_dir)
        rows[name]["accuracy"] = instruct_accuracy(loaded.model, loaded.tokenizer, held)
    report = {"preset": preset, "overrides": list(overrides), "held_out": len(held), "train": len(train), "rows": rows}
    (out / "sft.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    table = format_table(rows)
    (out / "sft.md").write_text(table + "\n", encoding="utf-8")
    log(table)
    return report


def train_measured(preset: str, overrides: list[str], overwrite: bool = False) -> dict:
    """Train in a child process; its wall time, peak resident memory, checkpoint size and optimizer bytes."""
    from arlm.interop.checkpoint import resolve_checkpoint  # lazy: kept out of --help

    command = [
        sys.executable,
        "-m",
        "arlm",
        "train",
        "--preset",
        preset,
        *overrides,
        *(["--overwrite"] if overwrite else []),
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode:
        raise ArlmError(f"training failed (exit {child.returncode}): {' '.join(command)}")
    run_dir = Path(overrides[overrides.index("--train.out_dir") + 1])
    checkpoint = resolve_checkpoint(run_dir)
    return {
        "seconds": seconds,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "checkpoint_bytes": (checkpoint / "model.safetensors").stat().st_size,
        "optimizer_bytes": optimizer_bytes(checkpoint / "state.safetensors"),
    }


def optimizer_bytes(state_file: Path) -> int:
    """Bytes of the optimizer moments a checkpoint's state.safetensors holds (read from its header only)."""
    with safe_open(state_file, "pt") as state:
        slices = [state.get_slice(k) for k in state.keys() if k.startswith("optim.")]  # noqa: SIM118 - no __iter__
        return sum(math.prod(s.get_shape()) * DTYPE_BYTES[s.get_dtype()] for s in slices)


def format_table(rows: dict) -> str:
    """The markdown table: accuracy [95% interval] and the lenient score per row, then each fine-tune's costs."""
    lines = [
        "| model | held-out accuracy [95% CI] | answer in reply | wall time | peak memory | checkpoint "
        "| optimizer state |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        acc = row["accuracy"]
        cell = f"{acc['accuracy']:.3f} [{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}] ({acc['correct']}/{acc['n']})"
        cell += f" | {acc['contained'] / max(acc['n'], 1):.3f} ({acc['contained']}/{acc['n']})"
        if "seconds" not in row:
            lines.append(f"| {name} | {cell} | - | - | - | - |")
            continue
        mib = [row[k] / 2**20 for k in ("peak_rss_bytes", "checkpoint_bytes", "optimizer_bytes")]
        lines.append(
            f"| {name} | {cell} | {row['seconds']:.0f} s | {mib[0]:,.0f} MiB | {mib[1]:,.1f} MiB | {mib[2]:,.2f} MiB |"
        )
    return "\n".join(lines)
