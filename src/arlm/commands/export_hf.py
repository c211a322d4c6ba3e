"""Write a checkpoint as a Hugging Face folder (GPT2LMHeadModel or LlamaForCausalLM) that transformers loads."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL OUT [--overwrite]."""
    parser.add_argument(
        "model", help="checkpoint, run folder (a LoRA run is merged into its base), .gguf file or 'smollm2'"
    )
    parser.add_argument("out", help="folder to write")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export (a folder with a config.json; never other files)",
    )


def run(args: argparse.Namespace) -> int:
    """Export and name the folder written."""
    from arlm.interop.hf import export_hf  # lazy: kept out of --help
    from arlm.interop.loading import load_model  # lazy: kept out of --help

    folder = export_hf(args.model, args.out, overwrite=args.overwrite, load=load_model)  # a LoRA run: merged
    print(f"wrote {folder}")
    return 0
