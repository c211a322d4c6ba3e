"""Train a draft model for speculative decoding by distilling a target's next-token distributions."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from arlm.commands.options import add_resume_argument
from arlm.commands.train import TrainSummary, resume_config, train_command
from arlm.config import RunConfig, build_config, parse_overrides
from arlm.errors import ArlmError

CONFIG_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--teacher, --layers, --preset, --resume [CHECKPOINT], --overwrite."""
    parser.add_argument("--teacher", default="smollm2", help="the target model to distill (default smollm2)")
    parser.add_argument(
        "--layers", type=int, default=2, help="blocks of the draft (copied from the teacher, spaced; default 2)"
    )
    parser.add_argument("--preset", default="smollm2-draft", help="data and training settings (default smollm2-draft)")
    add_resume_argument(parser, "continue the draft's run (its newest checkpoint, or the one given)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in train.out_dir")


def run(args: argparse.Namespace) -> int:
    """Distill a new draft, or resume one (the checkpoint's config holds the teacher)."""
    config = build_config(args.preset, args.overrides)
    if args.resume is not None:
        config, path = resume_config(config, args.resume, args.overrides, preset_given=False)
        train_command(config, resume=path, resuming=True)
        return 0
    refuse_teachers_settings(parse_overrides(args.overrides))
    distill_command(config, args.teacher, args.layers, overwrite=args.overwrite)
    return 0


def refuse_teachers_settings(given: dict) -> None:
    """Refuse an override the draft takes from its teacher instead: its tokenizer and its shape (but for its
    context and dropout)."""
    shape = sorted(set(given.get("model", {})) - {"block_size", "dropout"})
    if shape:
        raise ArlmError(f"--model.{shape[0]} does nothing here: the draft's shape is its teacher's (use --layers)")
    if "tokenizer" in given.get("data", {}):
        raise ArlmError("--data.tokenizer does nothing here: the draft uses its teacher's tokenizer")


def distill_command(
    config: RunConfig,
    teacher_ref: str,
    layers: int,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> TrainSummary:
    """Train a draft of `layers` blocks against teacher_ref with the given data/train settings."""
    from arlm.interop.loading import load_model  # lazy: kept out of --help
    from arlm.training.distill import draft_from_teacher, with_model_config  # lazy: kept out of --help

    teacher = load_model(teacher_ref)
    config.train.distill_from = teacher_ref
    config.data.tokenizer = teacher_ref
    draft = draft_from_teacher(teacher.model, layers)
    block = min(config.model.block_size, teacher.model.config.block_size)
    config.model = dataclasses.replace(draft.config, block_size=block, dropout=config.model.dropout)
    draft = with_model_config(draft, config.model)
    log(
        f"draft: {layers} of the teacher's {teacher.model.config.n_layer} layers, "
        f"{draft.num_params() / 1e6:.3g}M parameters"
    )
    return train_command(config, resume=resume, overwrite=overwrite, log=log, initial_model=draft)
