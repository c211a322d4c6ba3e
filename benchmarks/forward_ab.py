"""SmolLM2's forward at git revision REV against the working tree's, in processes that alternate: ms per forward over
1 / 5 / 8 new tokens after 32 (batch 1: a decoding step and speculative verifications), one step of batch 8 and
batch 8's prompts (8 x 32 tokens, a served batch's prefill).

    .venv/bin/python benchmarks/forward_ab.py [--rev HEAD] [--dtypes int4,int8] [--rounds 6] [--in-process]

REV is checked out into a temporary git worktree; each round runs one process per tree (order flipped every round),
each loading SmolLM2 at the dtype as `arlm generate` lays it out, building its own kernels (model/native.py: the
cache holds both builds) and timing the forwards (bench.forward.forward_times, 7 repeats, 7 batch-8 steps and 5
batch-8 prompts). The table gives the medians over rounds and new / REV. Time it on quiet cores.

--in-process, for a change of the C files alone: one process loads both trees' kernels (native.load_library) and
SmolLM2 once (the working tree's Python), and alternates the kernels forward by forward (order flipped every round;
rounds of one forward each): free of the drift between processes, which on a shared VM moved a whole run 10-30%."""

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


def in_process(old: Path, dtype: str, rounds: int) -> dict[str, list[float]]:
    """ms of the forwards in COLUMNS per kernel build ("working tree", "rev"), one forward each a round, alternating."""
    import time

    import torch

    from arlm.interop.loading import load_model
    from arlm.model import native
    from arlm.model.inference import optimize_for_decoding

    builds = {"working tree": native.load_library(native.HERE), "rev": native.load_library(old / "src/arlm/model")}
    model = optimize_for_decoding(load_model("smollm2", device=torch.device("cpu"), dtype=dtype).model).eval()
    shapes = dict(zip(COLUMNS, [(1, 1), (1, 5), (1, 8), (8, 1), (8, 32)]))  # rows, new tokens (32: the prompts)
    times: dict[str, list[list[float]]] = {name: [[] for _ in COLUMNS] for name in builds}
    with torch.inference_mode():
        for r in range(rounds + 1):  # (round 0 warms up)
            for c, (rows, new) in enumerate(shapes.values()):
                prompt = new == 32  # (else `new` tokens after 32 cached)
                ids = torch.randint(
                    10, 1000, (rows, 32 + (0 if prompt else new)), generator=torch.Generator().manual_seed(r)
                )
                cache = model.new_cache(rows, 64)
                for name in builds if r % 2 else reversed(builds):
                    native.library = lambda lib=builds[name]: lib  # (the layers call native.library() each time)
                    cache.rollback(0)
                    if not prompt:
                        model(ids[:, :32], kv_cache=cache)
                    start = time.perf_counter()
                    model(ids if prompt else ids[:, 32:], kv_cache=cache, num_logits=1 if prompt else 0)
                    if r:
                        times[name][c].append((time.perf_counter() - start) * 1000)
    return {name: [statistics.median(column) for column in columns] for name, columns in times.items()}


def main() -> None:
    """Check REV out, alternate the two trees per dtype, print the table, remove the worktree."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--dtypes", default="int4,int8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--in-process", action="store_true", help="both kernel builds in one process (C changes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        old = Path(scratch) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.rev], check=True)
        try:
            print(f"| dtype | tree | {' | '.join(COLUMNS)} | 5 / 1 |\n|---|---|---|---|---|---|---|---|")
            for dtype in args.dtypes.split(","):
                if args.in_process:
                    medians = in_process(old, dtype, args.rounds)
                    medians[args.rev] = medians.pop("rev")
                    report(dtype, medians, args.rev)
                    continue
                trees = {"working tree": ROOT, args.rev: old}
                for tree in trees.values():
                    measure(tree, dtype)  # builds the kernels, warms the page cache
                runs: dict[str, list[list[float]]] = {name: [] for name in trees}
                for r in range(args.rounds):
                    for name in trees if r % 2 == 0 else reversed(trees):
                        runs[name].append(measure(trees[name], dtype))
                medians = {name: [statistics.median(c) for c in zip(*rows)] for name, rows in runs.items()}
                report(dtype, medians, args.rev)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)


def report(dtype: str, medians: dict[str, list[float]], rev: str) -> None:
    """The table's rows for one dtype: each tree's medians, then new / REV."""
    for name, ms in medians.items():
        print(f"| {dtype} | {name} | {' | '.join(f'{m:.1f}' for m in ms)} | {ms[1] / ms[0]:.2f}x |")
    new, ref = medians["working tree"], medians[rev]
    print(f"| {dtype} | new / {rev} | {' | '.join(f'{a / b:.2f}' for a, b in zip(new, ref))} | |")


if __name__ == "__main__":
    main()
