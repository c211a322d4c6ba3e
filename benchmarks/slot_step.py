"""What continuous batching's step costs: SmolLM2 greedy batch 1, an 8-row slot step (`decode_slots`, each row in its
own slot at its own position, as `arlm serve` runs it) and a plain 8-row batch step over one KVCache, in tokens/s.

    .venv/bin/python benchmarks/slot_step.py [--dtype bfloat16] [--rounds 6]

The three alternate within each round; medians are printed. To compare two checkouts, alternate them by process:
    for r in 1 2 3; do for tree in OLD NEW; do PYTHONPATH=$tree/src .venv/bin/python benchmarks/slot_step.py \\
        --rounds 2; done; done
The model is laid out as the server lays it out (`optimize_for_decoding(batch_invariant=True)`). Time it on quiet
cores."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import arlm
from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.interop.loading import DTYPES, load_model
from arlm.model.inference import optimize_for_decoding

ROWS, CACHED, STEPS = 8, 64, 16


@torch.inference_mode()
def slot_rate(model: torch.nn.Module) -> float:
    """Tokens/s of STEPS slot steps over ROWS slots holding CACHED positions each."""
    cache = model.new_slot_cache(ROWS, 256)
    for slot in range(ROWS):
        row = cache.row(slot)
        model(torch.randint(0, 1000, (1, CACHED), generator=torch.Generator().manual_seed(slot)), kv_cache=row)
        cache.sync(slot, row)
    tokens = torch.randint(0, 1000, (ROWS, 1), generator=torch.Generator().manual_seed(99))  # (A, 1)
    model.decode_slots(tokens, cache.batch(list(range(ROWS))))  # warm-up
    start = time.perf_counter()
    for _ in range(STEPS):
        model.decode_slots(tokens, cache.batch(list(range(ROWS))))
    return STEPS * ROWS / (time.perf_counter() - start)


@torch.inference_mode()
def plain_rate(model: torch.nn.Module) -> float:
    """Tokens/s of STEPS one-token steps of a ROWS-row batch over one KVCache at CACHED positions."""
    cache = model.new_cache(ROWS, 256)
    model(torch.randint(0, 1000, (ROWS, CACHED), generator=torch.Generator().manual_seed(0)), kv_cache=cache)
    tokens = torch.randint(0, 1000, (ROWS, 1), generator=torch.Generator().manual_seed(99))  # (B, 1)
    start = time.perf_counter()
    for _ in range(STEPS):
        model(tokens, kv_cache=cache)
        cache.rollback(CACHED)
    return STEPS * ROWS / (time.perf_counter() - start)


def main() -> None:
    """Load, warm up, alternate the three measures, print medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    loaded = load_model("smollm2", device=torch.device("cpu"), dtype=args.dtype)
    model, tok = optimize_for_decoding(loaded.model, batch_invariant=True).eval(), loaded.tokenizer
    prompt = tok.encode("Write a short story about a lighthouse keeper.")
    config = GenerationConfig(strategy="greedy", max_new_tokens=args.new_tokens, stop_at_eos=False)
    generate(model, [prompt], GenerationConfig(strategy="greedy", max_new_tokens=4))  # warm-up

    def batch1() -> float:
        start = time.perf_counter()
        generate(model, [prompt], config)
        return args.new_tokens / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"batch 1": [], "8-row slot step": [], "8-row plain step": []}
    for _ in range(args.rounds):
        for name, fn in zip(rates, (batch1, lambda: slot_rate(model), lambda: plain_rate(model))):
            rates[name].append(fn())
    where = arlm.__file__.rsplit("/src/", 1)[0]
    print(f"{where} {args.dtype}: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
