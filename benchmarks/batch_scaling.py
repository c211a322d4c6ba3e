"""Batch scaling of greedy decoding per precision: aggregate tokens/s of 8 rows against 1, alternating in one process,
and the forward time over 1 / 5 / 8 new tokens (the cost of a speculative verification).

    .venv/bin/python benchmarks/batch_scaling.py [--dtypes float32,bfloat16,int8,int4] [--repeats 5] [--new-tokens 64]
        [--kernels native,pytorch]

SmolLM2-135M-Instruct (the shipped GGUF; int4 keeps its Q4_1 blocks), laid out by optimize_for_decoding as
`arlm generate` does; greedy, prompts of 32 random tokens (batch 8 ragged by up to 8, left-padded), every run
generating exactly --new-tokens per row. For each dtype the batch-1 and batch-8 runs alternate (order flipped every
repeat) and the table gives their medians and the ratio batch 8 / batch 1 (the basis of serving many users;
target >= 4x). --kernels loads each dtype once per kernel set (arlm's own where this machine builds them,
model/native.py, or PyTorch's alone: ARLM_NATIVE=0) and alternates them all, so the two sets compare within one
command. Time it on quiet cores."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from arlm.bench.decode import ragged_prompts
from arlm.bench.forward import forward_times
from arlm.bench.machine import cpu_model
from arlm.config import GenerationConfig
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding


def rate(engine: Engine, rows: list[list[int]], config: GenerationConfig, pad: int) -> float:
    """Aggregate generated tokens per second of one greedy run."""
    start = time.perf_counter()
    out = generate(engine, rows, config, pad_id=pad)
    return out.stats["new_tokens"] / (time.perf_counter() - start)


def load(dtype: str, kernels: str) -> tuple[Engine, int]:
    """SmolLM2 at `dtype` laid out for decoding, its layers on `kernels` (native: arlm's own), and its pad id."""
    os.environ["ARLM_NATIVE"] = "1" if kernels == "native" else "0"  # read when a layer is built
    loaded = load_model("smollm2", device=torch.device("cpu"), dtype=dtype)
    model = optimize_for_decoding(loaded.model).eval()
    os.environ.pop("ARLM_NATIVE")
    return Engine(model), loaded.tokenizer.pad_id or 0


def main() -> None:
    """Per dtype (and kernel set): load, warm up, alternate batch 1, batch 8 and the forwards, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8,int4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--kernels", default="native", help="native, pytorch or both, comma-separated")
    args = parser.parse_args()
    config = GenerationConfig(strategy="greedy", max_new_tokens=args.new_tokens, stop_at_eos=False)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| dtype | kernels | batch 1 tokens/s | batch 8 tokens/s | batch 8 / batch 1 "
          "| forward ms, 1 / 5 / 8 tokens | 5 / 1 |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for dtype in args.dtypes.split(","):
        sets = args.kernels.split(",")
        engines = {kernels: load(dtype, kernels) for kernels in sets}
        vocab = next(iter(engines.values()))[0].model.config.vocab_size
        cases = {1: ragged_prompts(1, 32, vocab), 8: ragged_prompts(8, 32, vocab)}
        rates = {(kernels, batch): [] for kernels in sets for batch in cases}
        forwards: dict[str, list[dict[int, float]]] = {kernels: [] for kernels in sets}
        for engine, pad in engines.values():
            for rows in cases.values():
                rate(engine, rows, GenerationConfig(strategy="greedy", max_new_tokens=4), pad)  # warm-up
        for r in range(args.repeats):
            for kernels, (engine, pad) in engines.items() if r % 2 == 0 else reversed(engines.items()):
                for batch in (1, 8) if r % 2 == 0 else (8, 1):
                    rates[kernels, batch].append(rate(engine, cases[batch], config, pad))
                forwards[kernels].append(forward_times(engine.model, repeats=1))
        for kernels in sets:
            one, eight = (statistics.median(rates[kernels, batch]) for batch in (1, 8))
            ms = {k: statistics.median(f[k] for f in forwards[kernels]) for k in (1, 5, 8)}
            print(f"| {dtype} | {kernels} | {one:.1f} | {eight:.1f} | {eight / one:.2f}x | {ms[1]:.1f} / {ms[5]:.1f} / "
                  f"{ms[8]:.1f} | {ms[5] / ms[1]:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
