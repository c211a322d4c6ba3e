"""Preallocated key/value caches: one buffer for all layers, written by position, rolled back by position; and
the slot cache of continuous batching, where each row (slot) holds one sequence with its own length."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, shape (n_layer, B, n_kv_heads, max_len, head_dim).

    `length` is the number of positions filled. A forward pass writes its keys/values at
    [start, start + T) and advances `length`; rolling back (speculative decoding) only moves `length`,
    and beam search reorders the batch dimension. `zeroed`: the positions not yet written hold zeros, as the
    compiled step needs (it attends over the whole buffer, masked: a NaN left there by earlier memory would reach
    its output); else they hold whatever memory held, which nothing reads (eager forwards read up to the positions
    written), and only the pages written are ever touched (docs/perf.md "A cache's unwritten positions left
    unset").
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        zeroed: bool = True,
    ) -> None:
        shape = (n_layer, batch_size, n_kv_heads, max_len, head_dim)
        new = torch.zeros if zeroed else torch.empty
        self.k = new(shape, dtype=dtype, device=device)  # (L, B, nkv, max_len, hd)
        self.v = new(shape, dtype=dtype, device=device)  # (L, B, nkv, max_len, hd)
        self.length, self.zeroed = 0, zeroed

    @property
    def max_len(self) -> int:
        """Positions the cache can hold."""
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        """Rows in the cache."""
        return self.k.shape[1]

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values (B, nkv, T, hd) at [start, start+T); return all keys/values up to start+T."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nkv, end, hd) each

    def write_at(
        self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Static-shape write for compiled decoding: k, v (B, nkv, 1, hd) at position tensor pos (1,); returns the
        whole buffers (B, nkv, max_len, hd), positions after pos being masked by the caller. The write indexes the
        whole buffer (layer and position as tensors): written into a view of it (`self.k[layer]`), the compiled
        step copied both whole buffers back at its end, every step (docs/perf.md, H200 2026-12-04)."""
        where = (torch.full_like(pos, layer), slice(None), slice(None), pos)  # -> (1, B, nkv, hd)
        self.k[where] = k.to(self.k.dtype).permute(2, 0, 1, 3)
        self.v[where] = v.to(self.v.dtype).permute(2, 0, 1, 3)
        return self.k[layer], self.v[layer]

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor, length: int = 0, zeroed: bool = True) -> KVCache:
        """A cache over existing buffers (L, B, nkv, max_len, hd) (views share their storage), filled to length;
        zeroed: whether the buffers' unwritten positions hold zeros (see KVCache)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.length, cache.zeroed = k, v, length, zeroed
        return cache

    def rollback(self, length: int) -> None:
        """Forget every position from `length` on (later writes overwrite them)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back a cache of length {self.length} to {length}")
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search): row i becomes old row index[i] (index (B',)), copying the filled
        positions only (in place where B' = B): copied whole, a beam search step's cost grew with max_new_tokens, not
        with the tokens made (docs/perf.md "Beam search's cache reordered over its filled positions")."""
        n = self.length
        if index.numel() == self.batch_size:
            self.k[:, :, :, :n] = self.k[:, :, :, :n].index_select(1, index)  # (L, B, nkv, n, hd)
            self.v[:, :, :, :n] = self.v[:, :, :, :n].index_select(1, index)
            return
        shape = (self.k.shape[0], index.numel(), *self.k.shape[2:])  # (L, B', nkv, max_len, hd)
        new = torch.zeros if self.zeroed else torch.empty
        k, v = (new(shape, dtype=self.k.dtype, device=self.k.device) for _ in range(2))
        k[:, :, :, :n], v[:, :, :, :n] = (
            self.k[:, :, :, :n].index_select(1, index),
            self.v[:, :, :, :n].index_select(1, index),
        )
        self.k, self.v = k, v


class SlotCache:
    """The cache of continuous batching: `slots` rows of `max_len` positions, (n_layer, slots, nkv, max_len, hd),
    each slot holding one sequence with its own length. A slot is filled like a batch-1 KVCache (`row`), and
    a decode step over several slots writes and attends each row at its own position (`batch`)."""

    def __init__(
        self,
        n_layer: int,
        slots: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        **kwargs: torch.dtype | torch.device | str,
    ) -> None:
        self.buffers = KVCache(n_layer, slots, n_kv_heads, max_len, head_dim, **kwargs)
        self.lengths = [0] * slots

    @property
    def max_len(self) -> int:
        """Positions each slot can hold."""
        return self.buffers.max_len

    @property
    def slots(self) -> int:
        """Number of slots."""
        return self.buffers.batch_size

    def row(self, slot: int) -> KVCache:
        """Slot `slot` as a batch-1 KVCache sharing this cache's storage (its length is synced by `sync`)."""
        b = self.buffers
        return KVCache.over(b.k[:, slot : slot + 1], b.v[:, slot : slot + 1], self.lengths[slot])

    def sync(self, slot: int, row: KVCache) -> None:
        """Record the length a row view reached."""
        self.lengths[slot] = row.length

    def reset(self, slot: int, keep: int = 0) -> None:
        """Empty a slot but for its first `keep` positions (the others are overwritten by later writes)."""
        if not 0 <= keep <= self.lengths[slot]:
            raise ValueError(f"slot {slot} holds {self.lengths[slot]} positions; cannot keep {keep}")
        self.lengths[slot] = keep

    def batch(self, slots: list[int]) -> SlotBatch:
        """One decode step over these slots, one new token each."""
        return SlotBatch(self, slots)


class SlotBatch:
    """The rows of one decode step: row i is slot `slots[i]`, at its own position. Each row writes its key and
    value at its slot's length and attends over its own prefix, through the same attention call, with the same
    shapes, as a batch-1 step would make: a row's output does not depend on which other rows share the step."""

    def __init__(self, cache: SlotCache, slots: list[int]) -> None:
        self.cache = cache
        self.slots = list(slots)
        self.lengths = [cache.lengths[s] for s in self.slots]  # positions each row held before this step
        if any(n >= cache.max_len for n in self.lengths):
            raise ValueError(f"a slot is full ({cache.max_len} positions)")
        device = cache.buffers.k.device
        self._slots = torch.tensor(self.slots, dtype=torch.long, device=device)  # (A,)
        self._at = torch.tensor(self.lengths, dtype=torch.long, device=device)  # (A,)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A,) slot of each row and (A,) position of its new token, long tensors on the cache's device."""
        return self._slots, self._at

    def positions(self, device: torch.device) -> torch.Tensor:
        """(A, 1) position of each row's new token."""
        return self._at.to(device)[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Write each row's new key and value (A, nkv, 1, hd) at its slot's length (one write for all rows);
        return views of the slots' keys and values (n, nkv, S, hd) from the lowest slot of the step to its highest
        (no copy) and the span each row attends over: row i over keys[j, :, :n] for (j, n) = spans[i]."""
        buf_k, buf_v = self.cache.buffers.k[layer], self.cache.buffers.v[layer]  # (slots, nkv, max_len, hd)
        buf_k[self._slots, :, self._at] = k[:, :, 0].to(buf_k.dtype)  # (A, nkv, hd), each slot at its position
        buf_v[self._slots, :, self._at] = v[:, :, 0].to(buf_v.dtype)
        low, high, S = min(self.slots), max(self.slots) + 1, max(self.lengths) + 1
        spans = [(slot - low, n + 1) for slot, n in zip(self.slots, self.lengths)]
        return buf_k[low:high, :, :S], buf_v[low:high, :, :S], spans  # (high - low, nkv, S, hd) each

    def advance(self) -> None:
        """Every row has written its new position (after the last layer)."""
        for slot in self.slots:
            self.cache.lengths[slot] += 1


# What a block and its attention are handed, named once for their hints:
Rope = tuple[torch.Tensor, torch.Tensor]  # RoPE's cos and sin, (T, head_dim) each, for the forward's positions
CacheView = KVCache | SlotBatch  # one sequence batch's cache, or continuous batching's rows in their slots
