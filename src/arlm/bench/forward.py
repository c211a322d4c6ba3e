"""Forward time by number of new tokens: one cached forward over k = 1..8 new tokens after a prompt (batch 1),
the cost of a speculative verification step relative to a one-token step. Median of repeats, the k's
interleaved within each repeat so that a slow stretch of the machine falls on all of them."""

from __future__ import annotations

import statistics
import time

import torch

from arlm.model.transformer import Transformer


def forward_times(
    model: Transformer, *, prompt_len: int = 32, max_tokens: int = 8, repeats: int = 5
) -> dict[int, float]:
    """k -> median milliseconds of one forward over k new tokens with a KV cache holding `prompt_len` tokens."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (1, prompt_len + max_tokens), generator=generator).to(device)
    cache = model.new_cache(1, prompt_len + max_tokens)
    times: dict[int, list[float]] = {k: [] for k in range(1, max_tokens + 1)}
    with torch.inference_mode():
        model(ids[:, :prompt_len], kv_cache=cache)  # (1, P) prefill
        for r in range(repeats + 1):  # the first round warms up and is not counted
            for k in times:
                cache.rollback(prompt_len)
                start = time.perf_counter()
                model(ids[:, prompt_len : prompt_len + k], kv_cache=cache)  # (1, k, V)
                if r:
                    times[k].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def format_forward_times(dtype: str, times: dict[int, float]) -> str:
    """One line: ms per forward for each k, and the k=5 / k=1 ratio (the cost of verifying 4 drafted tokens)."""
    cells = "  ".join(f"{k}: {ms:.1f}" for k, ms in times.items())
    ratio = f"; 5 vs 1 token: {times[5] / times[1]:.2f}x" if 5 in times else ""
    return f"  forward ms by new tokens ({dtype}): {cells}{ratio}"
