"""A preallocated key/value cache: one buffer for all layers, written by position, rolled back by position."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, shape (n_layer, B, n_kv_heads, max_len, head_dim).

    `length` is the number of positions filled. A forward pass writes its keys/values at
    [start, start + T) and advances `length`; rolling back (speculative decoding) only moves `length`,
    and beam search reorders the batch dimension.
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
    ) -> None:
        shape = (n_layer, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, nkv, max_len, hd)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, nkv, max_len, hd)
        self.length = 0

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

    def write_at(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Static-shape write for compiled decoding: k, v (B, nkv, 1, hd) at position tensor pos (1,); returns the
        whole buffers (B, nkv, max_len, hd), positions after pos being masked by the caller."""
        self.k[layer].index_copy_(2, pos, k)
        self.v[layer].index_copy_(2, pos, v)
        return self.k[layer], self.v[layer]

    def rollback(self, length: int) -> None:
        """Forget every position from `length` on (later writes overwrite them)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back a cache of length {self.length} to {length}")
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search): row i becomes old row index[i]."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
