"""Batch scaling of greedy decoding per precision: aggregate tokens/s of 8 rows against 1, alternating in one process.

    .venv/bin/python benchmarks/batch_scaling.py [--dtypes float32,bfloat16,int8,int4] [--repeats 5] [--new-tokens 64]

SmolLM2-135M-Instruct (the shipped GGUF; int4 keeps its Q4_1 blocks), laid out by optimize_for_decoding as
`arlm generate` does; greedy, prompts of 32 random tokens (batch 8 ragged by up to 8, left-padded), every run
generating exactly --new-tokens per row. For each dtype the batch-1 and batch-8 runs alternate (order flipped every
repeat) and the table gives their medians and the ratio batch 8 / batch 1 (the basis of serving many users;
target >= 4x). Time it on quiet cores."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from arlm.bench.machine import cpu_model
from arlm.config import GenerationConfig
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    """`batch` random prompts of length - 0..7 tokens (seeded)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, vocab, (length - (i * 3) % 8,), generator=g).tolist() for i in range(batch)]


def rate(engine: Engine, rows: list[list[int]], config: GenerationConfig, pad: int) -> float:
    """Aggregate generated tokens per second of one greedy run."""
    start = time.perf_counter()
    out = generate(engine, rows, config, pad_id=pad)
    return out.stats["new_tokens"] / (time.perf_counter() - start)


def main() -> None:
    """Per dtype: load, warm up, alternate batch 1 and batch 8, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8,int4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    config = GenerationConfig(strategy="greedy", max_new_tokens=args.new_tokens, stop_at_eos=False)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| dtype | batch 1 tokens/s | batch 8 tokens/s | batch 8 / batch 1 |\n|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        loaded = load_model("smollm2", device=torch.device("cpu"), dtype=dtype)
        model, pad = optimize_for_decoding(loaded.model).eval(), loaded.tokenizer.pad_id or 0
        engine = Engine(model)
        cases = {1: prompts(1, 32, model.config.vocab_size), 8: prompts(8, 32, model.config.vocab_size)}
        rates: dict[int, list[float]] = {1: [], 8: []}
        for rows in cases.values():
            rate(engine, rows, GenerationConfig(strategy="greedy", max_new_tokens=4), pad)  # warm-up
        for r in range(args.repeats):
            for batch in (1, 8) if r % 2 == 0 else (8, 1):
                rates[batch].append(rate(engine, cases[batch], config, pad))
        one, eight = statistics.median(rates[1]), statistics.median(rates[8])
        print(f"| {dtype} | {one:.1f} | {eight:.1f} | {eight / one:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
