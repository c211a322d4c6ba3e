"""Fold a LoRA run's adapters into its base model's weights: a plain arlm checkpoint any command reads.

`arlm merge runs/sft runs/sft-merged` writes the merged model (the LoRA run itself stays as it is; every other
command also merges it on load). The run's checkpoints hold the adapters in PEFT's layout too (peft/)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from arlm.config import LoRAConfig
from arlm.errors import ArlmError, check_replaceable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN OUT [--overwrite]."""
    parser.add_argument("run", help="a LoRA run folder or one of its checkpoints")
    parser.add_argument("out", help="folder for the merged checkpoint")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier merged checkpoint (never a folder of other files)"
    )


def run(args: argparse.Namespace) -> int:
    """Merge and name the checkpoint written."""
    print(f"wrote {merge_run(args.run, args.out, overwrite=args.overwrite)}")
    return 0


def merge_run(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the merged model of a LoRA run (or checkpoint) as an arlm checkpoint in `out`."""
    from arlm.interop.checkpoint import (  # lazy: kept out of --help
        MANIFEST,
        check_output_apart,
        export_weights,
        foreign_files,
        is_run_or_checkpoint,
        read_checkpoint,
        save_checkpoint,
    )
    from arlm.interop.loading import load_model  # lazy: kept out of --help

    out = Path(out)
    check_output_apart(out, run)  # never the run, one of its checkpoints or its base model
    if out.exists() and not (out / MANIFEST).is_file():  # --overwrite replaces a checkpoint, nothing else
        what = "is a file" if not out.is_dir() else "holds no arlm checkpoint"
        raise ArlmError(f"{out} {what} (--overwrite replaces only a checkpoint); choose another folder")
    check_replaceable(out, foreign_files(out) if out.exists() else [], "its checkpoint's")
    if out.exists() and not overwrite:
        raise ArlmError(f"{out} holds a checkpoint; pass --overwrite to replace it or choose another folder")
    if Path(run).exists() and not is_run_or_checkpoint(run):
        raise ArlmError(f"{run} is not a LoRA run (nor any arlm run or checkpoint)")
    meta = read_checkpoint(run, lambda checkpoint: checkpoint.meta)
    if "lora_base" not in meta:
        raise ArlmError(f"{run} is not a LoRA run (its checkpoint holds all the weights already)")
    loaded = load_model(run)
    config = loaded.config
    config.train = dataclasses.replace(config.train, lora=LoRAConfig())  # a plain model from here on
    meta = {"step": meta.get("step", 0), "merged_from": loaded.source}
    if loaded.data_fingerprint:  # the data it was trained on, which evaluation checks (prepared again since?)
        meta["data_fingerprint"] = loaded.data_fingerprint
    weights = export_weights(loaded.model.state_dict(), config.model)
    return save_checkpoint(out, weights=weights, tokenizer=loaded.tokenizer, config=config, meta=meta)
