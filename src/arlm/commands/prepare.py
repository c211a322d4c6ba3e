"""Read, normalize, split and tokenize a corpus into token shards, and print the corpus report."""

from __future__ import annotations

import argparse
from pathlib import Path

from arlm.config import DEFAULT_PRESET, build_config

CONFIG_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --out, --overwrite."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path")
    parser.add_argument("--out", help="output folder (default: data.prepared_dir, else <train.out_dir>/data)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace data prepared with other settings (never a folder of other files)",
    )


def run(args: argparse.Namespace) -> int:
    """Prepare the preset's corpus (with the overrides) into --out."""
    from arlm.data.prepare import prepare  # lazy: kept out of --help
    from arlm.interop.loading import load_tokenizer, prepared_dir  # lazy: kept out of --help

    config = build_config(args.preset, args.overrides)
    directory = Path(args.out) if args.out else prepared_dir(config)
    prepare(
        config.data,
        directory,
        overwrite=args.overwrite,
        block_size=config.model.block_size,
        resolve_tokenizer=load_tokenizer,
        flag="--out" if args.out else "--data.prepared_dir",
    )
    print(f"prepared data in {directory}")
    return 0
