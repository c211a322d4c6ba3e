"""SmolLM2's forward at git revision REV against the working tree's, in processes that alternate: ms per forward over
1 / 5 / 8 new tokens after 32 (batch 1: a decoding step and speculative verifications), one step of batch 8 and
batch 8's prompts (8 x 32 tokens, a served batch's prefill).

    .venv/bin/python benchmarks/forward_ab.py [--rev HEAD] [--dtypes int4,int8] [--rounds 6]

REV is checked out into a temporary git worktree; each round runs one process per tree (order flipped every round),
each loading SmolLM2 at the dtype as `arlm generate` lays it out, building its own kernels (model/native.py: the
cache holds both builds) and timing the forwards (bench.forward.forward_times, 7 repeats, 7 batch-8 steps and 5
batch-8 prompts). The table gives the medians over rounds and new / REV. Time it on quiet cores."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("forward 1", "forward 5", "forward 8", "batch-8 step", "batch-8 prompts")
MEASURE = """
import statistics, sys, time, torch
from arlm.bench.forward import forward_times
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding
model = optimize_for_decoding(load_model("smollm2", device=torch.device("cpu"), dtype=sys.argv[1]).model).eval()
ids = torch.randint(10, model.config.vocab_size, (8, 33), generator=torch.Generator().manual_seed(0))  # (8, 33)
cache, steps, prompts = model.new_cache(8, 64), [], []
with torch.inference_mode():
    for _ in range(6):
        cache.rollback(0)
        start = time.perf_counter()
        model(ids[:, :32], kv_cache=cache, num_logits=1)  # (8, 1, V): as a prefill
        prompts.append((time.perf_counter() - start) * 1000)
    for _ in range(8):
        cache.rollback(32)
        start = time.perf_counter()
        model(ids[:, 32:], kv_cache=cache)  # (8, 1, V)
        steps.append((time.perf_counter() - start) * 1000)
times = forward_times(model, repeats=7)
print(times[1], times[5], times[8], statistics.median(steps[1:]), statistics.median(prompts[1:]))
"""


def measure(tree: Path, dtype: str) -> list[float]:
    """One process on `tree`'s sources: ms of the forwards in COLUMNS."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, dtype], env=env, capture_output=True, text=True, check=True)
    return [float(value) for value in done.stdout.split()]


def main() -> None:
    """Check REV out, alternate the two trees per dtype, print the table, remove the worktree."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--dtypes", default="int4,int8")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        old = Path(scratch) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.rev], check=True)
        try:
            print(f"| dtype | tree | {' | '.join(COLUMNS)} | 5 / 1 |\n|---|---|---|---|---|---|---|---|")
            for dtype in args.dtypes.split(","):
                trees = {"working tree": ROOT, args.rev: old}
                for tree in trees.values():
                    measure(tree, dtype)  # builds the kernels, warms the page cache
                runs: dict[str, list[list[float]]] = {name: [] for name in trees}
                for r in range(args.rounds):
                    for name in trees if r % 2 == 0 else reversed(trees):
                        runs[name].append(measure(trees[name], dtype))
                medians = {name: [statistics.median(c) for c in zip(*rows)] for name, rows in runs.items()}
                for name, ms in medians.items():
                    print(f"| {dtype} | {name} | {' | '.join(f'{m:.1f}' for m in ms)} | {ms[1] / ms[0]:.2f}x |")
                new, ref = medians["working tree"], medians[args.rev]
                print(f"| {dtype} | new / {args.rev} | {' | '.join(f'{a / b:.2f}' for a, b in zip(new, ref))} | |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)


if __name__ == "__main__":
    main()
