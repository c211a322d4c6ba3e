"""Runs as the measuring and study verbs see them: a short label per model reference, and a preset trained once
per variant on one shared prepared corpus."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from arlm.commands.train import train_command
from arlm.config import build_config, parse_overrides
from arlm.errors import ArlmError
from arlm.training.run_dir import holds_run

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
    overwrite: bool = False,
) -> dict[str, tuple[Path, float]]:
    """Train one run per variant (the preset + overrides + the variant's own overrides), all on one prepared
    corpus in runs_dir/data; returns {name: (run folder, seconds)}. Runs of an earlier study are replaced only
    with overwrite (checked before anything is trained)."""
    runs_dir = Path(runs_dir)
    refuse_placement(overrides, "the study trains each run in --runs-dir (RUNS/NAME, its data in RUNS/data)")
    refuse_earlier_runs([runs_dir / name for name in variants], overwrite, "--runs-dir")
    shared = ["--data.prepared_dir", str(runs_dir / "data")]
    trained = {}
    for name, extra in variants.items():
        run_dir = runs_dir / name
        config = build_config(preset, [*overrides, *extra, *shared, "--train.out_dir", str(run_dir)])
        log(f"=== training {name}: {' '.join(extra) or '(preset as is)'}")
        start = time.perf_counter()
        train_command(config, overwrite=overwrite, log=log)
        trained[name] = (run_dir, time.perf_counter() - start)
    return trained


def refuse_placement(
    overrides: Sequence[str],
    where: str,
    keys: Iterable[str] = (),
    placed: tuple[str, ...] = ("train.out_dir", "data.prepared_dir"),
) -> None:
    """Refuse an override (or another given dotted key, e.g. a varied one) of where runs and their data go: a verb
    that places its runs itself (`where` says how) would otherwise drop it silently."""
    given = parse_overrides(list(overrides))
    named = [f"{section}.{key}" for section, values in given.items() if isinstance(values, dict) for key in values]
    for key in [*named, *(k.replace("-", "_") for k in keys)]:  # as parse_overrides spells them
        if key in placed:
            raise ArlmError(f"--{key}: {where}")


def refuse_earlier_runs(run_dirs: Iterable[Path], overwrite: bool, flag: str) -> None:
    """Refuse, unless overwrite, a run folder that holds an earlier run (checked before anything is trained); `flag`
    is the option that places the runs."""
    for run_dir in run_dirs:
        if not overwrite and holds_run(run_dir):
            raise ArlmError(f"{run_dir} holds an earlier run; pass --overwrite to replace it, or choose another {flag}")
