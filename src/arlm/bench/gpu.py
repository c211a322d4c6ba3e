"""The figures of `arlm bench gpu` (run by `bash benchmarks/gpu.sh`): a GPT-2-124M-shaped training step (bf16,
compiled) against transformers' GPT2LMHeadModel with MFU, and batch-1 greedy decoding of a SmolLM2-135M-shaped
Llama (bf16, compiled step with CUDA graphs) against transformers' generate(); then our compiled decoding per dtype
(bfloat16, int8 weight-only), each as cudagraph trees and as one captured CUDA graph, with a profile of each (kernels
and GPU time per token against the wall time). Smoke mode
runs the same code on tiny shapes on the CPU, so the test suite keeps the script from rotting."""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from arlm.bench.alternate import alternate
from arlm.bench.decode import SMOLLM2_SHAPE, ragged_prompts, run_decode_bench
from arlm.bench.train import run_bench
from arlm.config import GenerationConfig, ModelConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.decoding.engine import Engine, compile_options
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.interop.loading import to_dtype
from arlm.model.transformer import Transformer

GPT2_124M = dict(flavour="gpt2", n_layer=12, n_head=12, d_model=768, block_size=1024, vocab_size=50304, bias=True)
SMOKE_TRAIN = dict(flavour="gpt2", n_layer=2, n_head=2, d_model=64, block_size=64, vocab_size=512, bias=True)
SMOKE_DECODE = dict(
    flavour="llama", n_layer=2, n_head=3, n_kv_head=1, d_model=48, block_size=256, vocab_size=512, tie_embeddings=True
)


def environment(device: torch.device) -> dict:
    """The device's name and the torch and CUDA versions."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}


def train_figures(device: torch.device, smoke: bool, batch: int, log: Callable[[str], None] = print) -> dict:
    """Tokens/s and MFU of ours and of transformers on the 124M shape (OOM: the batch is halved)."""
    config = ModelConfig(**(SMOKE_TRAIN if smoke else GPT2_124M))
    dtype, compile = ("float32", False) if smoke else ("bfloat16", True)
    steps, repeats = (2, 1) if smoke else (10, 3)
    while True:
        try:
            return {
                "batch": batch,
                **run_bench(config, batch, steps, repeats, log, device=device, dtype=dtype, compile=compile),
            }
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            log(f"out of memory: retrying with batch {batch}")


def decode_figures(device: torch.device, smoke: bool, log: Callable[[str], None] = print) -> dict:
    """Batch-1 greedy tokens/s of ours (compiled step; and eager) and of transformers' generate(), random weights."""
    config = ModelConfig(**(SMOKE_DECODE if smoke else SMOLLM2_SHAPE))
    tokenizer = VocabTokenizer.train("char", ["abc"], 0)
    dtype = torch.float32 if smoke else torch.bfloat16
    figures = {}
    for compile in (True, False):
        log(f"-- arlm {'compiled step (CUDA graphs on GPU)' if compile else 'eager'} --")
        torch.manual_seed(0)  # the same weights for both passes (the bench re-lays out a CPU model's linears)
        model = Transformer(config).eval().to(device)
        figures["compiled" if compile else "eager"] = run_decode_bench(
            model,
            tokenizer,
            new_tokens=16 if smoke else 256,
            repeats=1 if smoke else 3,
            log=log,
            cases=["greedy, batch 1"],
            dtype=dtype,
            compile=compile,
        )
    return figures


def dtype_figures(
    device: torch.device,
    smoke: bool,
    untuned: bool = False,
    only: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Batch-1 greedy tokens/s of our compiled step per dtype (bfloat16, int8 weight-only; on the CPU float32 and
    int8), on a GPU each both as inductor's cudagraph trees and as one CUDA graph the engine captures ("one graph"),
    untuned: each on a GPU also compiled without coordinate descent tuning (its first compile costs ~130 s a variant
    on an H200 against ~30-55 s untuned: docs/perf.md), the same random weights, runs alternating, median of repeats;
    whether each output equals the first's and an eager (uncompiled) greedy decode's; and a profile of one run
    each. only: the variants to run, by name (empty: all; a GPU slot may not afford every cold compile)."""
    config = ModelConfig(**(SMOKE_DECODE if smoke else SMOLLM2_SHAPE))
    dtypes = figure_dtypes(smoke)
    variants = pick_variants(dtype_variants(device, dtypes, untuned), only)
    new_tokens, repeats = (16, 2) if smoke else (256, 7)
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=new_tokens, stop_at_eos=False, compile=True)
    uncompiled = dataclasses.replace(greedy, compile=False)  # the reference: the same model, eager
    prompt = ragged_prompts(1, 32, config.vocab_size)
    torch._dynamo.reset()  # every variant compiles afresh (and within the recompile limit)
    engines, outputs, eager = {}, {}, {}
    for name, (dtype, options) in variants.items():
        torch.manual_seed(0)
        engines[name] = Engine(to_dtype(Transformer(config), dtype, device), options)
        start = time.perf_counter()
        for _ in range(3):  # compilation and CUDA graph capture
            outputs[name] = generate(engines[name], prompt, greedy).generated()
        log(f"  {name}: compiled, captured and warmed up in {time.perf_counter() - start:.1f} s")
        if dtype not in eager:  # the variants of one dtype hold the same weights (seed 0): one eager decode each
            eager[dtype] = generate(engines[name].model, prompt, uncompiled).generated()  # an engine of its own
    names = list(variants)
    rates = alternate(
        {name: lambda name=name: generate(engines[name], prompt, greedy).stats["tokens_per_s"] for name in names},
        repeats,
    )
    figures = {"new_tokens": new_tokens, "repeats": repeats}
    for name in names:
        rate = statistics.median(rates[name])
        figures[name] = {
            "tokens_per_s": rate,
            "range": [min(rates[name]), max(rates[name])],
            "same_output_as_" + names[0]: outputs[name] == outputs[names[0]],
            "same_output_as_eager": outputs[name] == eager[variants[name][0]],
            "profile": _guarded(lambda name=name: step_profile(engines[name], prompt, greedy)),
        }
        log(f"  {name:<20} {rate:>8.1f} tokens/s (range {min(rates[name]):.1f}-{max(rates[name]):.1f})")
        log(f"    profile per token: {json.dumps(figures[name]['profile'])}")
    for kind in ("", ", one graph"):  # the second dtype against the first, each way of running the graph measured
        if dtypes[0] + kind in figures and dtypes[1] + kind in figures:
            rate = figures[dtypes[1] + kind]["tokens_per_s"] / figures[dtypes[0] + kind]["tokens_per_s"]
            figures[f"ratio_{dtypes[1]}{kind}"] = rate
    for dtype in dtypes:  # one graph against the trees, per dtype (on a GPU)
        if f"{dtype}, one graph" in figures and dtype in figures:
            speedup = figures[f"{dtype}, one graph"]["tokens_per_s"] / figures[dtype]["tokens_per_s"]
            figures[f"one_graph_speedup_{dtype}"] = speedup
    return figures


def figure_dtypes(smoke: bool) -> tuple[str, str]:
    """The two dtypes dtype_figures compares: on a GPU bfloat16 and int8, in the CPU smoke mode float32 and int8."""
    return ("float32", "int8") if smoke else ("bfloat16", "int8")


def pick_variants(variants: dict, only: tuple[str, ...]) -> dict:
    """The variants named in `only` (all where it is empty); an unknown name is refused."""
    unknown = [name for name in only if name not in variants]
    if unknown:
        raise ArlmError(f"--variants takes names of {'; '.join(variants)}; got {'; '.join(unknown)}")
    return {name: variant for name, variant in variants.items() if not only or name in only}


def dtype_variants(device: torch.device, dtypes: tuple[str, ...], untuned: bool) -> dict[str, tuple[str, dict | None]]:
    """dtype_figures' variants, name -> (dtype, compile options; None: the default, cudagraph trees on a GPU): each
    dtype; on a GPU each also as one CUDA graph the engine captures, and, untuned, without coordinate descent
    tuning (cudagraph trees). One graph applies only on CUDA: the CPU runs the dtypes alone."""
    variants = {}
    for name in dtypes:
        variants[name] = (name, None)
        if device.type == "cuda":
            variants[f"{name}, one graph"] = (name, compile_options(device, graph="manual"))
    if untuned and device.type == "cuda":
        variants |= {f"{name}, untuned": (name, compile_options(device, tuned=False)) for name in dtypes}
    return variants


def step_profile(engine: Engine, prompt: list[list[int]], config: GenerationConfig, top: int = 24) -> dict:
    """One generate() under torch.profiler: device kernels and their busy time per new token, against the wall time
    per new token (busy far below wall: the host or launches limit; near it: the kernels do), and the kernels that
    take most of it (with how many times each runs a token: which ops a fusion could merge)."""
    on_gpu = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profile(activities=activities) as prof:
        out = generate(engine, prompt, config)
    tokens = out.stats["new_tokens"]
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy, runs = Counter(), Counter()
    for kernel in kernels:
        busy[kernel.name] += kernel.time_range.elapsed_us()  # the kernel's own run
        runs[kernel.name] += 1
    return {
        "wall_us_per_token": 1e6 * out.stats["seconds"] / tokens,
        "kernels_per_token": len(kernels) / tokens,
        "busy_us_per_token": sum(busy.values()) / tokens,
        "top_kernels_us_per_token": {name: us / tokens for name, us in busy.most_common(top)},
        "top_kernels_runs_per_token": {name: runs[name] / tokens for name, _ in busy.most_common(top)},
    }


def _guarded(fn: Callable[[], dict]) -> dict:
    """fn's figures, or the error it raised (the figures measured before it are kept)."""
    try:
        return fn()
    except Exception as error:  # a profiler that cannot see the device must not lose the rates
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def run_section(results: dict, name: str, out: Path, fn: Callable[[], dict]) -> None:
    """Run one benchmark; a failure is recorded (and printed) without stopping the others; write results.json."""
    try:
        results[name] = fn()
    except Exception as error:  # a benchmark run reports every section it can
        traceback.print_exc()
        results[name] = {"error": f"{type(error).__name__}: {error}"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
