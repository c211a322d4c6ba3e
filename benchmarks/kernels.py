"""SmolLM2's matrix products alone, arlm's kernels against PyTorch's, alternating in one process.

    .venv/bin/python benchmarks/kernels.py [--dtypes float32,bfloat16,int8,int4] [--rows 1,5,8,16] [--repeats 7]

For each dtype SmolLM2-135M-Instruct is loaded twice as `arlm generate` lays it out, once on arlm's kernels
(model/native.py) and once with ARLM_NATIVE=0 (PyTorch's: the chunked `bmm` layout for float32, oneDNN's bfloat16
`linear`, `_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`); then every matrix product of one forward (its 121
weight layers, the head included) is called on M random rows of the model's float dtype, for each M, the two sets
alternating, and the table gives the median milliseconds per forward's worth of products. No attention, norms or Python
between layers: what the kernels cost.
Time it on quiet cores."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from arlm.bench.machine import cpu_model
from arlm.interop.loading import load_model
from arlm.model.inference import ChunkedLinear, NativeLinear, optimize_for_decoding
from arlm.model.quant import Int4Linear, Int8Linear

LAYERS = (nn.Linear, ChunkedLinear, NativeLinear, Int8Linear, Int4Linear)


def products(dtype: str, native: bool) -> list[nn.Module]:
    """SmolLM2's weight layers at `dtype`, on arlm's kernels or PyTorch's."""
    os.environ["ARLM_NATIVE"] = "1" if native else "0"  # read when a layer is built
    model = optimize_for_decoding(load_model("smollm2", device=torch.device("cpu"), dtype=dtype).model)
    os.environ.pop("ARLM_NATIVE")
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def forward_ms(layers: list[nn.Module], rows: dict[int, torch.Tensor]) -> float:
    """Milliseconds to run every layer once on rows of its input width."""
    start = time.perf_counter()
    for layer in layers:
        layer(rows[layer.in_features])
    return (time.perf_counter() - start) * 1000


def main() -> None:
    """Per dtype: load both sets, alternate them over the row counts, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8,int4")
    parser.add_argument("--rows", default="1,5,8,16")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    counts = [int(m) for m in args.rows.split(",")]
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| dtype | rows | arlm ms | PyTorch ms | PyTorch / arlm |\n|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        sets = {"arlm": products(dtype, True), "pytorch": products(dtype, False)}
        float_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        widths = {layer.in_features for layer in sets["arlm"]}
        g = torch.Generator().manual_seed(0)
        inputs = {m: {w: torch.randn(m, w, generator=g).to(float_dtype) for w in widths} for m in counts}
        times: dict[tuple[str, int], list[float]] = {(name, m): [] for name in sets for m in counts}
        with torch.inference_mode():
            for r in range(args.repeats + 1):  # the first round warms up
                for name, layers in sets.items() if r % 2 else reversed(sets.items()):
                    for m in counts:
                        ms = forward_ms(layers, inputs[m])
                        if r:
                            times[name, m].append(ms)
        for m in counts:
            ours, theirs = (statistics.median(times[name, m]) for name in sets)
            print(f"| {dtype} | {m} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
