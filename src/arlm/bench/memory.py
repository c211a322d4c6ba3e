"""What context length costs (`arlm bench memory`). Activation memory, peak memory and tokens/s of one training step as
the sequence grows, for the naive attention backend (explicit T x T scores) and SDPA (fused kernels); the largest
batch that fits a memory budget at each length (the step's measured peak a row); log-log plots with fitted
exponents.

Activation memory is exact: the bytes of the distinct tensors autograd saves for the backward pass (counted
with saved_tensors_hooks), which is what grows with T. Peak memory is measured too: on CPU the process's peak
resident memory during the step (VmHWM, reset before it, with glibc told to return freed memory), on CUDA
torch.cuda.max_memory_allocated. Each measurement runs in its own process under a memory limit, so running out
of memory ends that process (reported as OOM), not the machine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from arlm.bench.defaults import LENGTHS
from arlm.config import ModelConfig
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer

SHAPE = dict(flavour="llama", n_layer=2, n_head=4, d_model=128, vocab_size=256)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one forward (exact, no allocator
    noise): the activation memory a training step must hold at its peak."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x[:, :-1])  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    del loss, logits
    return sum(n for ptr, n in storages.items() if ptr not in params)


def measure(backend: str, length: int, batch: int, device: str = "cpu", repeats: int = 2) -> dict:
    """One configuration, in this process: bytes the step needs beyond the resident model, and tokens/s."""
    torch.manual_seed(0)
    config = ModelConfig(**SHAPE, block_size=length, attention=backend)
    model = Transformer(config).to(device)
    x = torch.randint(0, config.vocab_size, (batch, length + 1), device=device)

    def step() -> None:
        logits = model(x[:, :-1])  # (B, T, V)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        model.zero_grad(set_to_none=True)

    saved = saved_activation_bytes(model, x)
    step()  # warm-up: allocator and kernels
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
        base = _rss_kb("VmRSS:") * 1024
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kb("VmHWM:") * 1024
    seconds = (time.perf_counter() - start) / repeats
    return {
        "backend": backend,
        "length": length,
        "batch": batch,
        "step_bytes": max(peak - base, 0),
        "saved_bytes": saved,
        "tokens_per_s": batch * length / seconds,
    }


def _measure_in_child(backend: str, length: int, batch: int, device: str, limit_gb: float) -> dict:
    """measure() in a subprocess capped at limit_gb of address space; OOM is reported, not raised."""
    code = (
        "import json, resource, sys; from arlm.bench.memory import measure; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({int(limit_gb * 2**30)}, {int(limit_gb * 2**30)})) "
        f"if '{device}' == 'cpu' else None; "
        f"print(json.dumps(measure({backend!r}, {length}, {batch}, {device!r})))"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}  # RSS = live memory
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        oom = "MemoryError" in done.stderr or "out of memory" in done.stderr.lower() or "alloc" in done.stderr
        if not oom:
            raise ArlmError(f"memory measurement failed: {done.stderr.strip().splitlines()[-1]}")
        return {"backend": backend, "length": length, "batch": batch, "oom": True}
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_batch(one: dict, budget_gb: float, fixed: int) -> int:
    """How many rows of a measured step fit budget_gb beside `fixed` bytes (float32 weights, gradients and AdamW's two
    moments), each taking the step's peak at batch 1: its saved activations and the backward's transient buffers."""
    per_row = max(one["step_bytes"], one["saved_bytes"], 1)
    return int(max(budget_gb * 2**30 - fixed, 0) // per_row)


def _parameters(length: int) -> int:
    return Transformer(ModelConfig(**SHAPE, block_size=length)).num_params()


def fit_exponent(lengths: list[int], values: list[float]) -> float:
    """Slope of log(value) against log(length) over the upper half of the points (the asymptotic regime)."""
    points = [(math.log(t), math.log(v)) for t, v in zip(lengths, values) if v > 0]
    if len(points) >= 4:
        points = points[len(points) // 2 :]
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    return float(np.polyfit(xs, ys, 1)[0]) if len(points) >= 2 else float("nan")


def scores_bytes(naive: list[dict], sdpa: list[dict]) -> list[tuple[int, int]]:
    """(T, bytes) of the naive backend's extra activation memory over SDPA's, at the lengths both measured: what
    the explicit (T, T) score matrices cost, without the parts both backends share (linear in T)."""
    fused = {r["length"]: r["saved_bytes"] for r in sdpa if not r.get("oom")}
    ok = [r for r in naive if not r.get("oom") and r["length"] in fused]
    return [(r["length"], r["saved_bytes"] - fused[r["length"]]) for r in ok if r["saved_bytes"] > fused[r["length"]]]


def scores_exponent(naive: list[dict], sdpa: list[dict]) -> float:
    """Exponent of the growth of scores_bytes with T."""
    pairs = scores_bytes(naive, sdpa)
    return fit_exponent([t for t, _ in pairs], [extra for _, extra in pairs]) if len(pairs) >= 2 else math.nan


def run_memory_bench(
    *,
    lengths: tuple[int, ...] = LENGTHS,
    budget_gb: float = 4.0,
    device: str = "auto",
    limit_gb: float = 12.0,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure both backends over the lengths (one child process each), logging a line per measurement, and fit
    the exponents: {"device", "shape", "budget_gb", "rows": {backend: [...]}, "exponents": {...}}."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    rows: dict[str, list[dict]] = {}
    for backend in ("naive", "sdpa"):
        rows[backend] = []
        for length in lengths:
            one = _measure_in_child(backend, length, 1, device, limit_gb)
            rows[backend].append(one)
            if one.get("oom"):
                log(f"  {backend:<6} T={length:>5}: out of memory (limit {limit_gb} GB)")
                break
            one["max_batch"] = largest_batch(one, budget_gb, 4 * 4 * _parameters(length))
            log(
                f"  {backend:<6} T={length:>5}: activations {one['saved_bytes'] / 2**20:>9.1f} MiB, peak "
                f"+{one['step_bytes'] / 2**20:>8.1f} MiB, {one['tokens_per_s']:>8,.0f} tokens/s, "
                f"largest batch in {budget_gb:g} GB: {one['max_batch']}"
            )
    exponents = {}
    for backend, measured in rows.items():
        ok = [r for r in measured if not r.get("oom")]
        exponents[backend] = fit_exponent([r["length"] for r in ok], [r["saved_bytes"] for r in ok])
        log(f"  {backend}: activation memory grows as T^{exponents[backend]:.2f}")
    exponents["naive - sdpa"] = scores_exponent(rows["naive"], rows["sdpa"])
    log(f"  naive minus sdpa (the T x T scores alone) grows as T^{exponents['naive - sdpa']:.2f}")
    return {"device": device, "shape": SHAPE, "budget_gb": budget_gb, "rows": rows, "exponents": exponents}
