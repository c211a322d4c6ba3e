"""Decoding after a long context, by the KV cache's precision (`--kv-dtype`), beside llama.cpp at the same depth.

    .venv/bin/python benchmarks/kv_depth.py [--dtypes float32,int4] [--depths 64,1024,2048] [--new-tokens 32]
        [--repeats 3] [--llamacpp] [--attention]

SmolLM2-135M-Instruct (the shipped GGUF; int4 keeps its Q4_1 blocks) laid out by optimize_for_decoding as
`arlm generate` does. For each dtype and depth D: arlm's greedy batch-1 decoding of --new-tokens after a prompt of D
random tokens, its rate from the first new token on (the prompt's forward excluded, as llama-bench's -d excludes its
depth), over a float32 cache and over a bfloat16 one; with --llamacpp also `llama-bench -p 0 -n N -d D` on the same
precision's GGUF (benchmarks/llamacpp.sh makes them), its cache in f16 (its default; llama-bench offers no f32 cache).
Every run of a (dtype, depth) alternates with the others, the order reversed every repeat; the table gives medians
and the ratios bfloat16 / float32 cache (ours) and ours / llama.cpp. --attention times arlm's attention kernel alone
instead (SmolLM2's shape: 30 layers' caches, 9 query heads over 3, one new token at the depth; float32 against bfloat16
caches, alternating) with the rate at which it reads the cache. Time it on quiet cores."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from arlm.bench.alternate import alternate
from arlm.bench.llamacpp import find_llama_bench, gguf_for, llama_bench_rate, llamacpp_folder
from arlm.bench.machine import cpu_model
from arlm.config import GenerationConfig
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding


def arlm_rate(engine: Engine, prompt: list[int], new_tokens: int, kv: str) -> float:
    """Tokens/s of greedy decoding after `prompt`, from the first new token on, over a `kv` cache."""
    config = GenerationConfig(strategy="greedy", max_new_tokens=new_tokens, stop_at_eos=False, kv_dtype=kv)
    return generate(engine, [prompt], config).stats["decode_tokens_per_s"]


def sides(dtype: str, engine: Engine, depth: int, args: argparse.Namespace) -> dict[str, Callable[[], float]]:
    """The runs to alternate at one (dtype, depth): ours per cache width, and llama-bench's where asked."""
    prompt = torch.randint(10, engine.model.config.vocab_size, (depth,), generator=torch.Generator().manual_seed(0))
    ids = prompt.tolist()
    runs = {f"arlm {kv}": (lambda kv=kv: arlm_rate(engine, ids, args.new_tokens, kv)) for kv in ("float32", "bfloat16")}
    if args.llamacpp:
        folder = llamacpp_folder()
        binary, gguf = find_llama_bench(folder), gguf_for(folder, dtype)
        if binary is None:
            raise ArlmError(f"no llama-bench under {folder}; build it with: bash benchmarks/llamacpp.sh")
        threads, new = torch.get_num_threads(), args.new_tokens
        runs["llama.cpp"] = lambda: llama_bench_rate(binary, gguf, threads=threads, new_tokens=new, depth=depth)
    return runs


def attention_alone(depths: list[int], repeats: int) -> None:
    """Per depth: ms per token of the attention kernel over SmolLM2-shaped caches, float32 against bfloat16."""
    from arlm.model import native

    if not native.available():
        raise ArlmError("arlm's kernels do not build on this machine")
    nh, nkv, hd, layers = 9, 3, 64, 30
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 1, (nh + 2 * nkv) * hd, generator=g)  # (1, 1, (nh + 2 nkv) hd): one new token
    rope = tuple(torch.randn(1, 1, hd, generator=g) for _ in range(2))  # (1, 1, hd) each
    print("\n| depth | float32 cache, ms | GB/s | bfloat16 cache, ms | GB/s | float32 / bfloat16 |")
    print("|---|---|---|---|---|---|")
    for depth in depths:
        caches = {dtype: [torch.randn(2, 1, nkv, depth + 1, hd, generator=g).to(dtype) for _ in range(layers)]
                  for dtype in (torch.float32, torch.bfloat16)}  # fmt: skip
        calls = {dtype: [native.attention_call(qkv, rope, c[0], c[1], nh, depth)[0] for c in cs]
                 for dtype, cs in caches.items()}  # fmt: skip
        times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in calls}
        for r in range(repeats + 1):  # the first round warms up
            for dtype, layer_calls in calls.items() if r % 2 else reversed(calls.items()):
                start = time.perf_counter()
                for call in layer_calls:
                    native.attend(qkv, call)
                if r:
                    times[dtype].append(time.perf_counter() - start)
        cells = [str(depth)]
        for dtype, values in times.items():
            seconds, read = statistics.median(values), layers * 2 * nkv * depth * hd * dtype.itemsize
            cells += [f"{seconds * 1e3:.2f}", f"{read / seconds / 1e9:.1f}"]
        ratio = statistics.median(times[torch.float32]) / statistics.median(times[torch.bfloat16])
        print("| " + " | ".join(cells) + f" | {ratio:.2f}x |", flush=True)


def row(dtype: str, depth: int, medians: dict[str, float]) -> str:
    """One line of the table: medians and ratios."""
    ours32, ours16 = medians["arlm float32"], medians["arlm bfloat16"]
    cells = [dtype, str(depth), f"{ours32:.1f}", f"{ours16:.1f}", f"{ours16 / ours32:.2f}x"]
    if "llama.cpp" in medians:
        theirs = medians["llama.cpp"]
        cells += [f"{theirs:.1f}", f"{ours32 / theirs:.2f}x", f"{ours16 / theirs:.2f}x"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    """Per dtype: load once; per depth: warm up, alternate the runs, print a line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,int4")
    parser.add_argument("--depths", default="64,1024,2048")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llamacpp", action="store_true", help="llama-bench beside (benchmarks/llamacpp.sh)")
    parser.add_argument("--attention", action="store_true", help="the attention kernel alone")
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.attention:
        return attention_alone([int(d) for d in args.depths.split(",")], args.repeats)
    head = "| dtype | depth | arlm, float32 cache | arlm, bfloat16 cache | bfloat16 / float32 |"
    rule = "|---|---|---|---|---|"
    if args.llamacpp:
        head += " llama.cpp, f16 cache | arlm float32 cache / llama.cpp | arlm bfloat16 cache / llama.cpp |"
        rule += "---|---|---|"
    print(f"\n(tokens/s after the depth's prompt, medians of {args.repeats})\n{head}\n{rule}")
    for dtype in args.dtypes.split(","):
        engine = Engine(optimize_for_decoding(load_model("smollm2", dtype=dtype).model))
        for depth in map(int, args.depths.split(",")):
            runs = sides(dtype, engine, depth, args)
            for kv in ("float32", "bfloat16"):
                runs[f"arlm {kv}"]()  # warm-up
            rates = alternate(runs, args.repeats)
            print(row(dtype, depth, {name: statistics.median(v) for name, v in rates.items()}), flush=True)


if __name__ == "__main__":
    main()
