"""Runs as the measuring and study verbs see them: a short label per model reference, and a preset trained once
per variant on one shared prepared corpus."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from arlm.commands.train import train_command
from arlm.config import build_config

# Every run of a study gets these on top of the preset: the final report on 20 batches per split instead of
# whole splits (the study measures the val split itself), and no sample text.
STUDY_OVERRIDES = ("--train.final_eval_batches", "20", "--train.sample_tokens", "0")


def run_label(reference: str, taken: Iterable[str] = ()) -> str:
    """A short name for a model reference (the run folder's name), unique among `taken`."""
    path = Path(reference)
    parts = path.parts
    label = parts[parts.index("checkpoints") - 1] if "checkpoints" in parts[1:] else (path.name or reference)
    taken = set(taken)
    unique, i = label, 2
    while unique in taken:
        unique, i = f"{label}-{i}", i + 1
    return unique


def train_variants(
    preset: str,
    variants: dict[str, list[str]],
    runs_dir: str | Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, tuple[Path, float]]:
    """Train one run per variant (the preset + overrides + the variant's own overrides), all on one prepared
    corpus in runs_dir/data; returns {name: (run folder, seconds)}."""
    runs_dir = Path(runs_dir)
    shared = ["--data.prepared_dir", str(runs_dir / "data")]
    trained = {}
    for name, extra in variants.items():
        run_dir = runs_dir / name
        config = build_config(preset, [*overrides, *extra, *shared, "--train.out_dir", str(run_dir)])
        log(f"=== training {name}: {' '.join(extra) or '(preset as is)'}")
        start = time.perf_counter()
        train_command(config, overwrite=True, log=log)
        trained[name] = (run_dir, time.perf_counter() - start)
    return trained
