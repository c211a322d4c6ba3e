"""The one decoding engine: every strategy (greedy, sampling, beam search, speculative decoding, prompt lookup)
runs its model through an Engine's three calls over a KV cache the engine owns:

- `prefill(ids)`: encode tokens (a prompt, or a draft catching up) into the cache; the next-token logits (B, V);
- `step(tokens)`: one new token per row; the next-token logits (B, V) (the compiled static step when opened so);
- `verify(block)`: k new tokens per row in one forward; the logits after each (B, k, V).

An Engine made by generate() lives for that call and is closed (its cache freed) at its end. A caller that decodes
many times with `compile` (a benchmark, a server) makes one Engine and passes it to generate() instead of the
model: the compiled step and its static cache (fixed addresses, so a CUDA graph replays) then stay with that
Engine, never on the model object."""

from __future__ import annotations

import torch

from arlm.errors import ArlmError
from arlm.model import native
from arlm.model.kv_cache import KVCache


def compile_options(device: torch.device, tuned: bool = True) -> dict:
    """torch.compile settings for the one-token step: inductor; on a GPU with CUDA graphs (what mode "reduce-overhead"
    sets) and, tuned, coordinate descent tuning, under which inductor writes a one-row matrix product as a multiply and
    a sum that it fuses with what surrounds it (an int8 layer's widening and scaling) instead of calling cuBLAS."""
    if device.type != "cuda":
        return {"mode": "default", "fullgraph": True}
    return {"fullgraph": True, "options": {"triton.cudagraphs": True, "coordinate_descent_tuning": tuned}}


KV_DTYPES = ("auto", "float32", "bfloat16")  # GenerationConfig.kv_dtype's values: the KV cache's dtype


def cache_dtype(name: str) -> torch.dtype | None:
    """A KV_DTYPES name as the cache's dtype; None for auto (the model's own: new_cache's default)."""
    if name not in KV_DTYPES:
        raise ArlmError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}; got {name!r}")
    return None if name == "auto" else getattr(torch, name)


def static_length(block_size: int, needed: int) -> int:
    """Length of a compiled step's cache: a power of two (at least 256, at most the context) covering `needed`
    positions, since every step attends over the whole buffer, masked: a few sizes, a few graphs."""
    return min(block_size, max(256, 1 << (needed - 1).bit_length()))


class Engine:
    """A model's prefill / step / verify over the KV cache this engine holds (one sequence batch at a time)."""

    def __init__(self, model: torch.nn.Module, options: dict | None = None) -> None:
        """options: torch.compile's settings for a compiled step (None: `compile_options` for the model's device)."""
        self.model = model
        self.options = options
        self.cache: KVCache | None = None
        self.static = False  # the cache is the compiled step's (fixed addresses, whole buffer masked)
        self._compiled = None  # model.decode_step compiled, made on the first compiled open
        self._pos: torch.Tensor | None = None  # (1,) next position on the device, for the compiled step

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def open(self, batch: int, needed: int, *, compiled: bool = False, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch` rows and `needed` positions (at most the context), of `dtype` (None: the
        model's). compiled: the compiled step's static cache, kept and reused by later opens that fit it (same rows,
        length, dtype, device)."""
        block = self.model.config.block_size
        if not compiled:
            self.close()
            self.cache = self.model.new_cache(batch, min(needed, block), dtype=dtype)
            return self.cache
        max_len, weight = static_length(block, needed), next(self.model.parameters())
        cache = self.cache
        fits = self.static and cache is not None and cache.batch_size == batch and cache.max_len == max_len
        if not (fits and cache.k.dtype == (dtype or weight.dtype) and cache.k.device == weight.device):
            self.close()  # free the old buffers first
            cache = self.model.new_cache(batch, max_len, dtype=dtype)
            torch._dynamo.mark_static_address(cache.k)
            torch._dynamo.mark_static_address(cache.v)
        if self._compiled is None:
            native.prepare_compile()
            options = self.options or compile_options(weight.device)
            self._compiled = torch.compile(self.model.decode_step, **options)
        cache.length = 0
        self.cache, self.static, self._pos = cache, True, None
        return cache

    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ids (B, T) after the cached positions; the logits (B, V) for the token after them."""
        self._pos = None
        return self.model(ids, kv_cache=self.cache, attention_mask=attention_mask, num_logits=1)[:, -1]

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row (B, 1) after the cached positions; the next-token logits (B, V)."""
        cache = self.cache
        if not self.static:
            return self.model(tokens, kv_cache=cache, attention_mask=attention_mask)[:, -1]
        if self._pos is None:
            self._pos = torch.tensor([cache.length], device=tokens.device)  # then advanced on the device
        logits = self._compiled(tokens, self._pos, cache)  # (B, V), static shapes: the whole cache masked
        self._pos += 1
        cache.length += 1
        return logits

    def verify(self, block: torch.Tensor) -> torch.Tensor:
        """k tokens per row (B, k) after the cached positions in one forward; the logits after each (B, k, V)."""
        if self.static:
            raise ValueError("a compiled engine steps one token at a time")
        return self.model(block, kv_cache=self.cache)

    @property
    def length(self) -> int:
        """Positions cached."""
        return 0 if self.cache is None else self.cache.length

    def rollback(self, length: int) -> None:
        """Forget cached positions from `length` on (rejected drafts; a sliding window empties the cache)."""
        self.cache.rollback(length)
        self._pos = None

    def reorder(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes old row index[i] (beam search)."""
        self.cache.reorder(index)

    def close(self) -> None:
        """Free the cache (the compiled function stays, for a later compiled open)."""
        self.cache, self.static, self._pos = None, False, None


def engine_for(model: torch.nn.Module | Engine) -> tuple[Engine, bool]:
    """The engine to decode with: the one given, or a new one over the model; and whether the caller owns it
    (and so closes it when done)."""
    if isinstance(model, Engine):
        return model, False
    return Engine(model), True
