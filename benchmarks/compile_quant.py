"""torch.compile against eager for SmolLM2's one-token step at each dtype, and inductor's weight-only GEMM templates
against the ATen kernels for one layer (docs/perf.md, "Decoding against llama.cpp, per precision" and "A compiled step
on the CPU").

    .venv/bin/python benchmarks/compile_quant.py step --dtype float32|bfloat16|int8|int4 \
        --variant eager|default|autotune
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 .venv/bin/python benchmarks/compile_quant.py kernel --dtype int4

`step`: greedy batch 1, 64 tokens, two untimed calls (compilation), then the median of 5 (run each variant in its
own process, alternating, on quiet cores). `kernel`: one 576 -> 1536 layer at M = 1, 5, 8 rows, eager against
`max-autotune-no-cudagraphs` with freezing; inductor prints which template its autotuning chose and its time."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch._inductor.config as inductor_config

from arlm.config import GenerationConfig
from arlm.decoding import engine as engine_module
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding
from arlm.model.quant import Int4Linear, Int8Linear

PROMPT = "The Python standard library provides modules for reading and writing files, working with"


def step(dtype: str, variant: str) -> None:
    """Tokens/s of greedy batch-1 decoding with the eager or a compiled one-token step."""
    loaded = load_model("smollm2", dtype=dtype)
    model = optimize_for_decoding(loaded.model.eval())
    if variant == "autotune":
        inductor_config.freezing = True
        engine_module.compile_options = lambda device: {"mode": "max-autotune-no-cudagraphs", "fullgraph": True}
    config = GenerationConfig(strategy="greedy", max_new_tokens=64, stop_at_eos=False, compile=variant != "eager")
    engine, ids = Engine(model), loaded.tokenizer.encode(PROMPT)
    start = time.perf_counter()
    generate(engine, [ids], config)
    first = time.perf_counter() - start
    generate(engine, [ids], config)
    rates = [generate(engine, [ids], config).stats["tokens_per_s"] for _ in range(5)]
    print(f"{dtype} {variant}: median {statistics.median(rates):.1f} tokens/s {[round(r, 1) for r in rates]}; "
          f"first call {first:.1f} s")  # fmt: skip


def _micros(fn, x: torch.Tensor, calls: int = 300) -> float:
    """Median microseconds per call over 5 rounds."""
    for _ in range(20):
        fn(x)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def kernel(dtype: str) -> None:
    """One quantized layer, eager against max-autotune, at 1, 5 and 8 rows (each M compiled on its own)."""
    inductor_config.freezing = True
    torch.manual_seed(0)
    linear = torch.nn.Linear(576, 1536, bias=False)
    layer = (Int4Linear.from_float(linear, 32) if dtype == "int4" else Int8Linear.from_float(linear)).eval()
    with torch.no_grad():
        for rows in (1, 5, 8):
            compiled = torch.compile(layer.forward, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False)
            x = torch.randn(rows, 576).bfloat16()
            same = torch.equal(layer(x), compiled(x))
            print(f"{dtype} M={rows}: eager {_micros(layer, x):.0f} us, compiled {_micros(compiled, x):.0f} us, "
                  f"bit-identical: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("step", "kernel"))
    parser.add_argument("--dtype", default="int4", choices=("float32", "bfloat16", "int8", "int4"))
    parser.add_argument("--variant", default="eager", choices=("eager", "default", "autotune"))
    args = parser.parse_args()
    if args.what == "kernel" and args.dtype not in ("int8", "int4"):
        parser.error("kernel times the quantized layers: --dtype int8 or int4")
    step(args.dtype, args.variant) if args.what == "step" else kernel(args.dtype)


if __name__ == "__main__":
    main()
