"""Train a preset over a grid (--vary section.key=v1,v2,...) and draw all loss curves in one figure.

Every run shares one prepared corpus (each its own when the varied keys change the data); the figure is the
LLaMA paper's Figure 1 at our scale, and the final losses are tabulated."""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from pathlib import Path

from arlm.commands.runs import refuse_placement
from arlm.commands.train import resume_config, train_command
from arlm.config import DEFAULT_PRESET, RunConfig, build_config
from arlm.errors import ArlmError
from arlm.training.logging import read_metrics
from arlm.training.run_dir import holds_run

CONFIG_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --vary (repeatable), --same-tokens, --out, --overwrite, --resume."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path")
    parser.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="SECTION.KEY=V1,V2",
        help="values to sweep (repeat for a grid), e.g. model.d_model=64,128,192",
    )
    parser.add_argument(
        "--same-tokens",
        action="store_true",
        help="when model.block_size varies, scale the batch so every run sees the same tokens",
    )
    parser.add_argument("--out", default="runs/sweep", help="folder for the runs and the figure")
    parser.add_argument("--overwrite", action="store_true", help="retrain the runs of an earlier sweep in --out")
    parser.add_argument(
        "--resume", action="store_true", help="continue a stopped sweep in --out: each run from its newest checkpoint"
    )


def run(args: argparse.Namespace) -> int:
    """Train the grid and draw it."""
    sweep_command(
        args.preset, args.vary, args.overrides, same_tokens=args.same_tokens, out_dir=args.out,
        overwrite=args.overwrite, resume=args.resume,
    )  # fmt: skip
    return 0


def parse_vary(specs: list[str]) -> list[tuple[str, list[str]]]:
    """['model.d_model=64,128'] -> [('model.d_model', ['64', '128'])]."""
    out = []
    for spec in specs:
        key, eq, values = spec.partition("=")
        if not eq or "." not in key or not values:
            raise ArlmError(f"--vary takes section.key=v1,v2,...; got {spec!r}")
        if key in (k for k, _ in out):  # (the last would be trained under every label)
            raise ArlmError(f"--vary {key} is given twice; list its values once: {key}=v1,v2,...")
        listed = values.split(",")
        if len(set(listed)) < len(listed):  # (the runs would collapse into one)
            raise ArlmError(f"--vary {spec} lists {next(v for v in listed if listed.count(v) > 1)} twice")
        out.append((key, listed))
    return out


def sweep_command(
    preset: str,
    vary: list[str],
    overrides: list[str] | None = None,
    *,
    same_tokens: bool = False,
    out_dir: str = "runs/sweep",
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Train every combination (sharing one prepared corpus unless their data settings differ) and plot loss vs
    tokens for all of them; an --out holding an earlier sweep is retrained only with overwrite, or continued with
    resume (each run from its newest checkpoint; a finished one kept)."""
    from arlm.data.prepare import data_fingerprint  # lazy: kept out of --help
    from arlm.model.transformer import Transformer  # lazy: kept out of --help

    grid = parse_vary(vary)
    if same_tokens and "train.batch_size" in (key for key, _ in grid):
        raise ArlmError("--same-tokens sets each run's train.batch_size from its context; do not vary it as well")
    combos = list(itertools.product(*(values for _, values in grid)))  # in the order the runs train
    labels = [_label(grid, combo) for combo in combos]
    if len(set(labels)) < len(labels):
        raise ArlmError(
            f"two runs would be labelled {next(x for x in labels if labels.count(x) > 1)}; vary other values"
        )
    where = "the sweep places each run in --out (OUT/LABEL, its data in OUT/data); use --out"
    refuse_placement(overrides or [], where, (key for key, _ in grid))
    base = build_config(preset, overrides)
    out = Path(out_dir)
    if resume and overwrite:
        raise ArlmError("--resume continues the sweep in --out and --overwrite retrains it: give one of them")
    if resume and not (out.is_dir() and any(holds_run(out / label) for label in labels)):
        raise ArlmError(f"--out {out} holds no run of this grid to resume")
    _claim_out(out, overwrite or resume, labels)
    configs = {}
    for label, combo in zip(labels, combos):
        extra = [arg for (key, _), value in zip(grid, combo) for arg in (f"--{key}", value)]
        configs[label] = _run_config(preset, [*(overrides or []), *extra], out, label, base, same_tokens)
    if len({data_fingerprint(config.data) for config in configs.values()}) > 1:
        for label, config in configs.items():  # other data settings: each run its own corpus, OUT/LABEL/data
            config.data.prepared_dir = str(out / label / "data")
    results: dict[str, dict] = {}
    for label, config in configs.items():
        log(f"=== {label} ===")
        final, config = _train(config, resume and holds_run(out / label), overwrite, log)
        results[label] = {"final": final, "parameters": Transformer(config.model).num_params(), "run": str(out / label)}
    _report(results, grid, preset, out, log)
    return results


def _train(
    config: RunConfig, resume: bool, overwrite: bool, log: Callable[[str], None]
) -> tuple[dict[str, dict], RunConfig]:
    """One run of the grid trained (or continued from its newest checkpoint): its final figures per split and the
    config it ran with (its vocabulary set); a run finished before keeps the figures its log holds."""
    checkpoint = None
    if resume:
        config, checkpoint = resume_config(config, "latest", [], preset_given=True, log=log)
    if checkpoint is None or checkpoint.meta.get("step", 0) < config.train.max_steps:
        summary = train_command(config, resume=checkpoint, resuming=resume, overwrite=overwrite, log=log)
        return {s: r.as_dict() for s, r in summary.final.items()}, config
    config = checkpoint.config  # (its vocabulary set)
    run_dir = Path(config.train.out_dir)
    finals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "final"]
    if not finals:
        raise ArlmError(f"{run_dir} finished without its final evaluation in its log; remove it to train it again")
    log(f"{run_dir} finished before: kept")
    named = {k.removeprefix("final_"): v for k, v in finals[-1].items() if k.startswith("final_")}
    splits = {name.split("_", 1)[0] for name in named}
    return {s: {k.split("_", 1)[1]: v for k, v in named.items() if k.startswith(s + "_")} for s in splits}, config


def _label(grid: list[tuple[str, list[str]]], combo: tuple[str, ...]) -> str:
    """A run's folder name: key=value per varied key (its last part; a value's "/" as "_", one folder deep)."""
    return "-".join(f"{key.rsplit('.', 1)[1]}={value.replace('/', '_')}" for (key, _), value in zip(grid, combo))


def _claim_out(out: Path, overwrite: bool, labels: list[str]) -> None:
    """Refuse an --out holding files unless overwrite and it holds an earlier sweep (its sweep.json or a run), and
    then one whose runs this sweep would not all train again (they trained on OUT/data, which it prepares again)."""
    if not out.is_dir() or not any(out.iterdir()):
        if out.exists() and not out.is_dir():
            raise ArlmError(f"--out {out} is a file; name a folder for the sweep")
        return
    marks = [out / "sweep.json", out / "data" / "meta.json"]  # its report, or its corpus prepared before any run
    is_sweep = any(p.exists() for p in marks) or any(holds_run(p) for p in out.iterdir() if p.is_dir())
    if not is_sweep:
        raise ArlmError(f"--out {out} holds files but no sweep; choose another --out")
    if not overwrite:
        raise ArlmError(
            f"--out {out} holds an earlier sweep; pass --overwrite to retrain its runs or choose another --out"
        )
    left = sorted(p.name for p in out.iterdir() if p.is_dir() and holds_run(p) and p.name not in labels)
    if left:
        raise ArlmError(
            f"--out {out} holds runs this sweep does not train again ({', '.join(left)}), on data it would prepare "
            "again; remove them or choose another --out"
        )


def _run_config(
    preset: str, overrides: list[str], out: Path, label: str, base: RunConfig, same_tokens: bool
) -> RunConfig:
    """One run's config: its own folder, the shared corpus, no sample unless asked; the batch scaled with
    --same-tokens."""
    shared = ["--train.out_dir", str(out / label), "--data.prepared_dir", str(out / "data")]
    config = build_config(preset, ["--train.sample_tokens", "0", *overrides, *shared])  # a sample when asked
    if same_tokens and config.model.block_size != base.model.block_size:
        rows = base.train.batch_size * base.model.block_size / config.model.block_size
        if rows < 1 or rows != int(rows):
            raise ArlmError(
                f"--same-tokens: batch {base.train.batch_size} x {base.model.block_size} tokens cannot "
                f"be kept at context {config.model.block_size}"
            )
        config.train.batch_size = int(rows)
    return config


def _number(value: str) -> float | None:
    """A varied value as a number for the final-loss figure, None for a word."""
    try:
        return float(value)
    except ValueError:
        return None


def _report(
    results: dict[str, dict], grid: list[tuple[str, list[str]]], preset: str, out: Path, log: Callable[[str], None]
) -> None:
    """Every loss curve in one figure, final validation loss against a single varied key, a table, sweep.json (the
    train split's figures where the runs have no validation split)."""
    from arlm.commands.plots import plot_lines, plot_loss  # lazy: kept out of --help

    runs = {label: read_metrics(out / label / "metrics.jsonl") for label in results}
    plot_loss(runs, out / "loss.png", title=f"{preset}: loss vs tokens")
    values = {label: _number(label.split("=", 1)[1]) for label in results}
    split = "val" if all("val" in r["final"] for r in results.values()) else "train"
    if len(grid) == 1 and None not in values.values():  # (a key of words, model.flavour: the table says it)
        key = grid[0][0]
        points = [(values[label], r["final"][split]["loss"]) for label, r in results.items()]
        plot_lines(
            {f"final {split} loss": points},
            out / "final.png",
            xlabel=key,
            ylabel=f"{split} loss",
            logx=all(x > 0 for x in values.values()),
            title=f"final {split} loss vs {key}",
        )
    log(f"{'run':<28}{'parameters':>12}{split + ' loss':>11}{split + ' ppl':>11}")
    for label, r in results.items():
        final = r["final"][split]
        log(f"{label:<28}{r['parameters']:>12,}{final['loss']:>11.4f}{final['ppl']:>11.2f}")
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out / 'loss.png'}")
