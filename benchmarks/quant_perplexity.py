"""Perplexity of SmolLM2-135M-Instruct at every --dtype on the same windows (quality, not speed).

    .venv/bin/python benchmarks/quant_perplexity.py [--max-chars 100000] [--context 512] [--stride 256] [--dtype-rows]

tinyshakespeare's first 100,000 characters, windows of 512 tokens moved by 256 (the figures of
`arlm eval perplexity smollm2 --file tinyshakespeare --max-chars 100000 --context 512 --stride 256 --dtype D`
for the --dtype rows). float32 is the GGUF dequantized to float32: the reference for every row. Besides the
--dtype paths it scores the choices behind them: the tied 49152 x 576 head (the file's Q8_0) requantized per output
channel or kept in float32, int4 requantized from float32 (what --dtype int4 does to a checkpoint) against int4 from
the file's Q4_1 blocks.
Prints a markdown table for docs/perf.md."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch

from arlm.data.normalize import corpus_text
from arlm.evaluation.perplexity import sliding_window
from arlm.interop.loading import load_model, to_dtype
from arlm.model.quant import Int8Linear, quantize_model


def with_head(model: torch.nn.Module, reference: torch.nn.Module, quantized: bool) -> torch.nn.Module:
    """`model` with its head replaced by the reference's float32 one, or that requantized to int8 per output channel
    (what --dtype int4 / int8 of the GGUF did until 2026-12-05)."""
    head = copy.deepcopy(reference.lm_head)
    model.lm_head = Int8Linear.from_float(head) if quantized else head
    return model


def dtype_rows(reference: torch.nn.Module) -> dict[str, Callable[[], torch.nn.Module]]:
    """The --dtype paths, float32 first: row label -> a function building that model."""
    fresh = lambda: copy.deepcopy(reference)
    return {
        "float32 (GGUF dequantized)": lambda: reference,
        "`--dtype int4` (Q4_1 layers and Q8_0 head from the file)": lambda: load_model("smollm2", dtype="int4").model,
        "`--dtype int8` (per channel; Q8_0 head from the file)": lambda: load_model("smollm2", dtype="int8").model,
        "`--dtype bfloat16`": lambda: to_dtype(fresh(), "bfloat16"),
    }


def choice_rows(reference: torch.nn.Module) -> dict[str, Callable[[], torch.nn.Module]]:
    """The choices behind the --dtype paths (head kept or quantized, requantized int4, group size)."""
    fresh = lambda: copy.deepcopy(reference)
    return {
        "int4 from the file's Q4_1 blocks, head requantized to int8 per channel": lambda: with_head(
            load_model("smollm2", dtype="int4").model, reference, quantized=True
        ),
        "int4 from the file's Q4_1 blocks, head float32": lambda: with_head(
            load_model("smollm2", dtype="int4").model, reference, quantized=False
        ),
        "int8 per channel, head too (`to_dtype`, no file)": lambda: to_dtype(fresh(), "int8"),
        "int4 g32 requantized from float32, head int8 (`--dtype int4` of a checkpoint)": lambda: quantize_model(
            fresh(), "int4", 32
        ),
        "int4 g32 requantized from float32, head float32": lambda: quantize_model(fresh(), "int4", 32, head=False),
        "int8, head kept float32": lambda: quantize_model(fresh(), "int8", head=False),
        "int4 g64 requantized from float32, head float32": lambda: quantize_model(fresh(), "int4", 64, head=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-chars", type=int, default=100_000)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument(
        "--dtype-rows", action="store_true", help="only float32 and the --dtype rows (not the choices behind them)"
    )
    args = parser.parse_args()
    loaded = load_model("smollm2")
    text = corpus_text("tinyshakespeare", loaded.config.data, args.max_chars)
    ids = torch.tensor(loaded.tokenizer.encode(text), dtype=torch.long)
    print(f"tinyshakespeare, first {args.max_chars:,} characters: {ids.numel():,} tokens, "
          f"windows of {args.context} moved by {args.stride}; torch {torch.__version__}")  # fmt: skip
    print("| model | loss | perplexity | vs float32 |\n|---|---|---|---|", flush=True)
    base = None
    rows = dtype_rows(loaded.model) | ({} if args.dtype_rows else choice_rows(loaded.model))
    for label, build in rows.items():
        result = sliding_window(build().eval(), ids, context=args.context, stride=args.stride)
        base = base or result.perplexity
        change = f"{result.perplexity / base - 1:+.2%}"
        print(f"| {label} | {result.loss:.4f} | {result.perplexity:.3f} | {change} |", flush=True)


if __name__ == "__main__":
    main()
