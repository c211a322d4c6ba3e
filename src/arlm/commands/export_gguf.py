"""Write a Llama checkpoint (or any Llama reference) as one GGUF file with its tokenizer, which llama.cpp runs."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL OUT.gguf [--outtype] [--overwrite]."""
    parser.add_argument("model", help="checkpoint, run folder, HF folder, .gguf file or 'smollm2' (Llama flavour)")
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument(
        "--outtype",
        default="f32",
        choices=("f32", "f16", "bf16", "q8_0"),
        help="the weight matrices' type (default f32)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")


def run(args: argparse.Namespace) -> int:
    """Export and name the file written."""
    from arlm.interop.gguf_export import export_gguf  # lazy: kept out of --help

    print(f"wrote {export_gguf(args.model, args.out, outtype=args.outtype, overwrite=args.overwrite)}")
    return 0
