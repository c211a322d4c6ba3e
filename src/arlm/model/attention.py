"""Causal self-attention (naive or SDPA backend, grouped-query) and rotary position embeddings."""

from __future__ import annotations

import math
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import ModelConfig
from arlm.model import native
from arlm.model.kv_cache import CacheView, KVCache, Rope, SlotBatch

STEPWISE_QUERIES = 32  # a cached forward over at most this many new tokens (a verification) attends query by query
_LAST_CALL = threading.local()  # per thread: the attention kernel's arguments of the latest forward (`native_call`)
# One sequence's share of a forward over several (`forward_many`): its rows of the call, rope (cos, sin), mask,
# is_causal, cache and start, as `forward` takes them for that sequence alone.
Part = tuple[slice, Rope | None, torch.Tensor | None, bool, KVCache, int]


class Rotary(nn.Module):
    """RoPE tables (cos, sin) for positions [0, max_len), in the rotate-half layout of HF Llama."""

    def __init__(self, head_dim: int, max_len: int, theta: float) -> None:
        super().__init__()
        # on the CPU even under a device context (Transformer.from_weights builds on "meta"); .to() moves them
        steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu")
        inv_freq = 1.0 / (theta ** (steps.float() / head_dim))  # (hd/2,)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32, device="cpu"), inv_freq)  # (max_len, hd/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (max_len, hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions (T,) -> (1, 1, T, hd) or (B, T) -> (B, 1, T, hd)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 1:
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hd/2) of x (B, h, T, hd) by the position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, h, T, hd)
    return (x * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with one fused q/k/v projection."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.backend = config.attention
        self.dropout = config.dropout
        width = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(config.d_model, width, bias=config.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: CacheView | None = None,
        start: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); mask (B|1, 1, T, S) bool (True = may attend) or None."""
        qkv = self.qkv(x)  # (B, T, (nh + 2 nkv) hd)
        return self.resid_dropout(self.proj(self.mix(qkv, rope, mask, is_causal, kv_cache, start)))

    def forward_many(self, x: torch.Tensor, parts: list[Part]) -> torch.Tensor:
        """Several sequences' rows x (1, N, C) -> (1, N, C): the projections over all the rows at once, the attention
        of each part (its rows, rope, mask, is_causal, cache and start) alone, by what `forward` runs for it."""
        qkv = self.qkv(x)  # (1, N, (nh + 2 nkv) hd)
        mixed = [self.mix(qkv[:, rows], *part) for rows, *part in parts]  # (1, T_i, nh hd) each
        return self.resid_dropout(self.proj(torch.cat(mixed, dim=1)))  # (1, N, C)

    def mix(
        self,
        qkv: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """The heads' outputs (B, T, nh hd) for the rows' queries, keys and values qkv (B, T, (nh + 2 nkv) hd),
        the keys and values written into kv_cache at `start`."""
        B, T = qkv.shape[:2]
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        if self.native_attends(qkv, rope, kv_cache, start):
            call, _ = self.native_call(qkv, rope, mask, kv_cache, start)  # _: what the call points into, kept
            return native.attend(qkv, call)
        heads = qkv.view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # (B, nh + 2 nkv, T, hd)
        qk, v = heads.split([nh + nkv, nkv], dim=1)  # (B, nh + nkv, T, hd), (B, nkv, T, hd)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # queries and keys rotated together: one set of ops
        q, k = qk.split([nh, nkv], dim=1)  # (B, nh, T, hd), (B, nkv, T, hd)
        if isinstance(kv_cache, SlotBatch):  # continuous batching: each row at its own position in its own slot
            y = self.attend_slots(q, k, v, kv_cache)  # (A, nh, 1, hd)
        else:
            if isinstance(start, torch.Tensor):  # compiled decoding: static shapes over the whole cache
                k, v = kv_cache.write_at(self.layer, start, k, v)  # (B, nkv, max_len, hd) each
            elif kv_cache is not None:
                k, v = kv_cache.update(self.layer, start, k, v)  # (B, nkv, S, hd) each, S = start + T
            k, v = self._cached_as_rows(q, k, v)
            if kv_cache is not None and 1 < T <= STEPWISE_QUERIES and not self.training and qkv.device.type == "cpu":
                y = self.attend_stepwise(q, k, v, mask)  # (B, nh, T, hd)
            else:
                y = self.attend(q, k, v, mask, is_causal)  # (B, nh, T, hd)
        return y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh*hd)

    def native_attends(
        self,
        rows: torch.Tensor,
        rope: Rope | None,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> bool:
        """Whether attention over new tokens' rows (B, T, ...) runs on arlm's kernel (model/native.py): cached
        inference on the CPU over at most STEPWISE_QUERIES new tokens (decoding steps and verifications), RoPE, the
        SDPA backend, float32 or bfloat16 rows and cache, the kernel built; elsewhere PyTorch's ops (the same rotation
        and cache bits)."""
        if kv_cache is None or rope is None or isinstance(start, torch.Tensor) or self.backend != "sdpa":
            return False
        usable = rows.dtype in native.ROW_DTYPES and kv_buffers(kv_cache).k.dtype in native.ROW_DTYPES and rows.is_cpu
        small = rows.shape[1] <= STEPWISE_QUERIES and self.head_dim % 16 == 0 and self.head_dim <= 256
        inference = not (self.training or rows.requires_grad or torch.compiler.is_compiling())
        return usable and small and inference and native.available()

    def native_call(
        self,
        rows: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        kv_cache: CacheView,
        start: int,
    ) -> tuple[native.Attention, list[torch.Tensor]]:
        """The attention kernel's arguments for new tokens' rows (B, T, ...) at `start` of kv_cache (a KVCache or a
        SlotBatch), and the tensors they point into: queries and keys rotated, keys and values written into the
        cache, each query over its keys up to itself (or as `mask` allows). Every layer of one forward shares its
        arguments but the cache's layer: the first layer's are kept (per thread) and the others' only re-pointed."""
        values = (start, tuple(rows.shape[:2]), rows.dtype)
        last = getattr(_LAST_CALL, "value", None)  # the cache by weak reference: a finished one is freed
        if last and last[0] is rope[0] and last[1] is mask and last[2]() is kv_cache and last[3] == values:
            call, kept = last[4], last[5]
            buffers = kv_buffers(kv_cache)
            call.ck, call.cv = buffers.k[self.layer].data_ptr(), buffers.v[self.layer].data_ptr()
            return call, kept
        call, kept = self._new_native_call(rows, rope, mask, kv_cache, start)
        _LAST_CALL.value = (rope[0], mask, weakref.ref(kv_cache), values, call, kept)
        return call, kept

    def _new_native_call(
        self,
        rows: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        kv_cache: CacheView,
        start: int,
    ) -> tuple[native.Attention, list[torch.Tensor]]:
        """`native_call`'s arguments built afresh."""
        cos, sin = rope[0][:, 0], rope[1][:, 0]  # (B or 1, T, hd) each
        if isinstance(kv_cache, SlotBatch):
            slots, positions = kv_cache.rows()  # (A,) each
            buffers = kv_buffers(kv_cache)
            k, v = buffers.k[self.layer], buffers.v[self.layer]  # (slots, nkv, L, hd) each
            return native.attention_call(rows, (cos, sin), k, v, self.n_head, positions, slots=slots)
        if start + rows.shape[1] > kv_cache.max_len:
            raise ValueError(
                f"KV cache holds {kv_cache.max_len} positions; asked to write up to {start + rows.shape[1]}"
            )
        allowed = None if mask is None else mask[:, 0]  # (B or 1, T, S)
        k, v = kv_cache.k[self.layer], kv_cache.v[self.layer]  # (B, nkv, L, hd) each
        return native.attention_call(rows, (cos, sin), k, v, self.n_head, start, allowed=allowed)

    def attend_slots(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        """Queries (A, nh, 1, hd), one per slot of the step, each over its own slot's prefix by the attention call
        (and inputs) a batch-1 step makes; the cache write and the widening of 16-bit inputs to float32 done once
        for all rows (a per-row loop of those cost a third of a batch-8 step)."""
        keys, values, spans = batch.update(self.layer, k, v)  # (n, nkv, S, hd) each, the step's slots
        if self._widened(q):
            q, keys, values = q.float(), keys.float(), values.float()
        keys, values = self._cached_as_rows(q, keys, values)
        rows = [
            self._kernel(q[i : i + 1], keys[j : j + 1, :, :n], values[j : j + 1, :, :n], None, False)
            for i, (j, n) in enumerate(spans)
        ]  # (1, nh, 1, hd) each
        return torch.cat(rows).to(k.dtype)  # (A, nh, 1, hd)

    def attend_stepwise(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Queries (B, nh, T, hd) over the cache's keys/values (B, nkv, S, hd) one at a time, each exactly as a
        one-token step computes it (its keys up to itself; no mask unless padding): CPU SDPA rounds a query's
        row differently by how many queries come with it, so a speculative verification computed at once would
        not give the bits of the steps it stands for, and kernels that round their inputs to bfloat16 (int8 /
        int4, 16-bit weights) turn those 1e-7 differences into other tokens (tests/model/test_attention.py)."""
        T, S = q.shape[2], k.shape[2]
        rows = []
        for i in range(T):
            seen = S - T + i + 1  # keys up to and including query i
            row_mask = None if mask is None else mask[:, :, i : i + 1, :seen]  # (B|1, 1, 1, seen)
            if row_mask is not None and bool(row_mask.all()):
                row_mask = None  # a step without padding builds no mask
            rows.append(self.attend(q[:, :, i : i + 1], k[:, :, :seen], v[:, :, :seen], row_mask, False))
        return torch.cat(rows, dim=2)  # (B, nh, T, hd)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        """Attention of queries (B, nh, T, hd) over keys/values (B, nkv, S, hd) by the configured backend."""
        if self._widened(q):
            # 16-bit attention in float32: softmax and weighted sums keep float32's precision (what every 16-bit
            # figure in docs/perf.md was measured with).
            return self._kernel(q.float(), k.float(), v.float(), mask, is_causal).to(q.dtype)
        return self._kernel(q, k, v, mask, is_causal)

    def _kernel(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        """The configured backend on inputs as they are: (B, nh, T, hd) over (B, nkv, S, hd)."""
        dropout = self.dropout if self.training else 0.0
        if self.backend == "naive":
            return naive_attention(q, k, v, mask, is_causal, dropout)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, enable_gqa=self.n_kv_head != self.n_head
        )  # (B, nh, T, hd)

    def _cached_as_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values from a cache of another precision than the queries' (GenerationConfig.kv_dtype) in the
        queries' dtype, which PyTorch's attention needs (16-bit rows are widened later, by `attend`)."""
        if k.dtype == q.dtype or self._widened(q):
            return k, v
        return k.to(q.dtype), v.to(q.dtype)

    def _widened(self, q: torch.Tensor) -> bool:
        """Whether attention runs in float32 for these inputs (inference only)."""
        return not self.training and attends_in_float32(q)


def kv_buffers(kv_cache: CacheView) -> KVCache:
    """The KVCache whose buffers a forward writes: the cache itself, or a slot batch's slot cache's."""
    return kv_cache.cache.buffers if isinstance(kv_cache, SlotBatch) else kv_cache


def attends_in_float32(t: torch.Tensor) -> bool:
    """Whether inference attention over tensors of t's dtype and device computes in float32: 16-bit on CPU."""
    return t.dtype in (torch.bfloat16, torch.float16) and t.is_cpu


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, dropout: float = 0.0
) -> torch.Tensor:
    """The textbook form: softmax(q k^T / sqrt(d), upper triangle -inf) v, with explicit (T, S) scores."""
    if k.shape[1] != q.shape[1]:  # grouped-query: each key/value head serves n_head / n_kv_head query heads
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)  # (B, nh, S, hd)
    T, S = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, S)
    if is_causal:
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # (T, S)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, nh, T, S)
    if dropout:
        weights = F.dropout(weights, p=dropout)
    return weights @ v  # (B, nh, T, hd)
