"""A prompt's processing (time to the first token) beside llama.cpp's, per precision.

    .venv/bin/python benchmarks/prompt_llamacpp.py [--dtypes float32,bfloat16,int8,int4] [--prompt-tokens 64,512]
        [--repeats 3]

SmolLM2-135M-Instruct (the shipped GGUF; int4 keeps its Q4_1 blocks) laid out by optimize_for_decoding as `arlm
generate` does. For each dtype and prompt length P: arlm's `generate()` of one greedy token after P random tokens, its
rate P / the seconds `generate` took to give it (what a user waits before the first token: the forward over the
prompt, the step over its last token and the pick), against `llama-bench -p P -n 0` on the same precision's GGUF
(benchmarks/llamacpp.sh makes them), same thread count. The two alternate, the order reversed every repeat; the table
gives medians and ours / llama.cpp.
Time it on quiet cores."""

from __future__ import annotations

import argparse
import os
import statistics

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


def arlm_prompt_rate(engine: Engine, prompt: list[int]) -> float:
    """Prompt tokens/s: len(prompt) over the seconds to the first new token (its stats' prompt_seconds leaves out the
    step over the prompt's last token: until 2026-12-07 this rate did, overstating it by that step)."""
    config = GenerationConfig(strategy="greedy", max_new_tokens=1, stop_at_eos=False)
    return len(prompt) / generate(engine, [prompt], config).stats["seconds"]


def medians(engine: Engine, binary, gguf, size: int, repeats: int, threads: int) -> tuple[float, float]:
    """(arlm, llama.cpp) median prompt tokens/s over a prompt of `size` random tokens, alternating."""
    g = torch.Generator().manual_seed(size)
    prompt = torch.randint(10, engine.model.config.vocab_size, (size,), generator=g).tolist()
    runs = {
        "arlm": lambda: arlm_prompt_rate(engine, prompt),
        "llama.cpp": lambda: llama_bench_rate(binary, gguf, threads=threads, new_tokens=0, prompt_tokens=size),
    }
    runs["arlm"]()  # warm-up
    rates = alternate(runs, repeats)
    return statistics.median(rates["arlm"]), statistics.median(rates["llama.cpp"])


def main() -> None:
    """Per dtype: load once; per prompt length: warm up, alternate, print a line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8,int4")
    parser.add_argument("--prompt-tokens", default="64,512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = llamacpp_folder()
    binary = find_llama_bench(folder)
    if binary is None:
        raise ArlmError(f"no llama-bench under {folder}; build it with: bash benchmarks/llamacpp.sh")
    threads = torch.get_num_threads()
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads")
    print(f"\n(prompt tokens/s, medians of {args.repeats})\n| dtype | prompt | arlm | llama.cpp | arlm / llama.cpp |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        engine, gguf = Engine(optimize_for_decoding(load_model("smollm2", dtype=dtype).model)), gguf_for(folder, dtype)
        for size in map(int, args.prompt_tokens.split(",")):
            ours, theirs = medians(engine, binary, gguf, size, args.repeats, threads)
            print(f"| {dtype} | {size} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
