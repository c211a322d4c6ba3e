"""The one decoding engine: every strategy (greedy, sampling, beam search, speculative decoding, prompt lookup)
runs its model through an Engine's three calls over a KV cache the engine owns:

- `prefill(ids)`: encode tokens (a prompt, or a draft catching up) into the cache; the next-token logits (B, V);
- `step(tokens)`: one new token per row; the next-token logits (B, V) (the compiled static step when opened so);
- `verify(block)`: k new tokens per row in one forward; the logits after each (B, k, V).

An Engine made by generate() lives for that call and is closed (its cache freed) at its end. A caller that decodes
many times with `compile` (a benchmark, a server) makes one Engine and passes it to generate() instead of the
model: the compiled step and its static cache (fixed addresses, so a CUDA graph replays) then stay with that
Engine, never on the model object. An Engine made with `reuse_prefix` (a chat, whose every turn re-sends the whole
conversation) also remembers the ids whose keys and values its cache holds, and `open(..., prompt=)` keeps the
longest beginning of a one-row prompt it holds already: generate() then encodes only the rest. The kept positions
were computed by other forwards (one-token steps, other chunks), so the logits equal a fresh prefill's up to
rounding, as chunked prefill's do, not bit for bit.

On a GPU the compiled step runs as CUDA graphs one of two ways (`compile_options`' graph): "trees", inductor's
cudagraph trees (the default), whose every call still pays the host dynamo's guards and the trees' checks of each
static input's address; or "manual", one `torch.cuda.CUDAGraph` per static cache (`StepGraph`), captured on the
first step after a new cache and replayed by every step, the tokens copied into its static input and the position
advanced by the graph itself: a few microseconds of host time a step. Either way a step's logits are the graph's
output buffer, rewritten by the next step (read them, or clone them, first)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from arlm.config import KV_DTYPES
from arlm.errors import ArlmError
from arlm.model import native
from arlm.model.kv_cache import KVCache

GRAPHS = ("trees", "manual")  # compile_options' graph: how a GPU's compiled step runs as CUDA graphs


def compile_options(device: torch.device, tuned: bool = True, graph: str = "trees") -> dict:
    """torch.compile settings for the one-token step: inductor; on a GPU with CUDA graphs and, tuned, coordinate
    descent tuning, under which inductor writes a one-row matrix product as a multiply and a sum that it fuses with
    what surrounds it (an int8 layer's widening and scaling) instead of calling cuBLAS. graph "trees": inductor's
    cudagraph trees (what mode "reduce-overhead" sets); "manual": inductor code without them, and the key "graph",
    which the Engine takes out before torch.compile, to capture one CUDA graph itself (`StepGraph`)."""
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {', '.join(GRAPHS)}; got {graph!r}")
    if device.type != "cuda":
        return {"mode": "default", "fullgraph": True}
    options = {"triton.cudagraphs": graph == "trees", "coordinate_descent_tuning": tuned}
    return {"fullgraph": True, "options": options, **({"graph": "manual"} if graph == "manual" else {})}


def cache_dtype(name: str) -> torch.dtype | None:
    """A KV_DTYPES name as the cache's dtype; None for auto (the model's own: new_cache's default)."""
    if name not in KV_DTYPES:
        raise ArlmError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}; got {name!r}")
    return None if name == "auto" else getattr(torch, name)


def static_length(block_size: int, needed: int) -> int:
    """Length of a compiled step's cache: a power of two (at least 256, at most the context) covering `needed`
    positions, since every step attends over the whole buffer, masked: a few sizes, a few graphs."""
    return min(block_size, max(256, 1 << (needed - 1).bit_length()))


class StepGraph:
    """The compiled step captured as one CUDA graph over one static cache (the addresses of its buffers, the
    weights', and the static inputs here): a replay runs the step's kernels and advances the position on the device,
    with none of the compiled function's host work (guards, input checks)."""

    def __init__(
        self,
        compiled: Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor],
        tokens: torch.Tensor,
        cache: KVCache,
    ) -> None:
        """Warm `compiled` up on a side stream (its first calls compile, tune and allocate, which a capture cannot),
        then capture one step: the logits for the tokens at the position, and the position advanced."""
        device, self.compiled, self.cache = tokens.device, compiled, cache
        self.tokens = tokens.clone(memory_format=torch.contiguous_format)  # (B, 1) copied into before each replay
        self.pos = torch.tensor([cache.length], device=device)  # (1,) next position, advanced by each replay
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # each writes these tokens' keys and values at the position, as the step will
                    compiled(self.tokens, self.pos, cache)  # (the position is not advanced, nor cache.length)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # recorded, not run: the cache and the position are as they were
                self.logits = self._captured()  # (B, V) the graph's output, rewritten by each replay

    def _captured(self) -> torch.Tensor:
        """What the graph holds: the compiled step's logits (B, V) over the static inputs; the position advanced."""
        logits = self.compiled(self.tokens, self.pos, self.cache)  # (B, V)
        self.pos.add_(1)
        return logits

    def replay(self, tokens: torch.Tensor, length: int | None) -> torch.Tensor:
        """The step for tokens (B, 1) at the position the last replay left, or at `length` (after a prefill or a
        rollback); the logits (B, V), the graph's buffer, which the next replay overwrites."""
        self.tokens.copy_(tokens)
        if length is not None:
            self.pos.fill_(length)
        self.graph.replay()
        return self.logits


class Engine:
    """A model's prefill / step / verify over the KV cache this engine holds (one sequence batch at a time)."""

    def __init__(self, model: torch.nn.Module, options: dict | None = None, reuse_prefix: bool = False) -> None:
        """options: torch.compile's settings for a compiled step (None: `compile_options` for the model's device);
        reuse_prefix: remember the ids cached, for `open`'s prompt to start from the beginning they share."""
        self.model = model
        self.options = options
        self.reuse_prefix = reuse_prefix
        self.reused = 0  # positions the last open kept (reuse_prefix)
        self._fed: list[torch.Tensor] | None = None  # ids (B, t) encoded into the cache, in order (reuse_prefix)
        self.cache: KVCache | None = None
        self.static = False  # the cache is the compiled step's (fixed addresses, whole buffer masked)
        self._compiled = None  # model.decode_step compiled, made on the first compiled open
        self._manual = False  # the compiled step runs as this engine's own CUDA graph (options' "graph": "manual")
        self._graph: StepGraph | None = None  # that graph, captured over the static cache on its first step
        self._pos: torch.Tensor | None = None  # (1,) next position on the device, for the compiled step

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def open(
        self,
        batch: int,
        needed: int,
        *,
        compiled: bool = False,
        dtype: torch.dtype | None = None,
        prompt: torch.Tensor | None = None,
    ) -> KVCache:
        """A cache for `batch` rows and `needed` positions (at most the context), of `dtype` (None: the model's),
        empty, or with reuse_prefix and a one-row unpadded prompt (1, T), holding the longest beginning of the
        prompt but its last token that the old cache held (`reused` of them). compiled: the compiled step's static
        cache, kept and reused by later opens that fit it (same rows, length, dtype, device)."""
        old, keep = self.cache, self._shared(prompt) if batch == 1 else 0
        cache = self._fresh(batch, needed, compiled, dtype)
        if keep and old.k.dtype != cache.k.dtype:
            keep = 0
        if keep and cache is not old:
            cache.k[:, :, :, :keep] = old.k[:, :, :, :keep]
            cache.v[:, :, :, :keep] = old.v[:, :, :, :keep]
        cache.length, self.reused = keep, keep
        if self.reuse_prefix:  # what the cache holds, recorded from here on
            self._fed = [] if prompt is None else [prompt[:, :keep]]
        return cache

    def _shared(self, prompt: torch.Tensor | None) -> int:
        """How many leading ids of a one-row prompt (1, T), but its last, the cache holds (0 without reuse_prefix)."""
        if prompt is None or not self._fed or self.cache is None or self.cache.batch_size != 1:
            return 0
        held = torch.cat(self._fed, dim=1)[0, : self.cache.length]  # (L,)
        return shared_beginning(held.tolist(), prompt[0].tolist())

    def _fresh(self, batch: int, needed: int, compiled: bool, dtype: torch.dtype | None) -> KVCache:
        """The cache `open` fills: new, or the compiled step's static one where it fits; its length set to 0."""
        block = self.model.config.block_size
        if not compiled:
            self.close()
            self.cache = self.model.new_cache(batch, min(needed, block), dtype=dtype, zeroed=False)  # (read as written)
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
            options = dict(self.options or compile_options(weight.device))
            self._manual = options.pop("graph", "trees") == "manual" and weight.device.type == "cuda"
            self._compiled = torch.compile(self.model.decode_step, **options)
        cache.length = 0
        self.cache, self.static, self._pos = cache, True, None
        return cache

    def prefill(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ids (B, T) after the cached positions; the logits (B, V) for the token after them, refused when they
        are not numbers (weights holding NaN or infinities, a float range overflowed), which no strategy can decode."""
        self._pos = None
        self._record(ids)
        return check_finite(self.model(ids, kv_cache=self.cache, attention_mask=attention_mask, num_logits=1)[:, -1])

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row (B, 1) after the cached positions; the next-token logits (B, V) (compiled on a GPU: a
        CUDA graph's output, which the next step overwrites)."""
        cache = self.cache
        self._record(tokens)
        if not self.static:
            return self.model(tokens, kv_cache=cache, attention_mask=attention_mask)[:, -1]
        if self._manual:
            return self._replay(tokens)
        if self._pos is None:
            self._pos = torch.tensor([cache.length], device=tokens.device)  # then advanced on the device
        logits = self._compiled(tokens, self._pos, cache)  # (B, V), static shapes: the whole cache masked
        self._pos += 1
        cache.length += 1
        return logits

    def _replay(self, tokens: torch.Tensor) -> torch.Tensor:
        """The compiled step as this engine's CUDA graph over its static cache (captured on the cache's first step);
        the logits (B, V), the graph's buffer."""
        cache = self.cache
        if self._graph is None:
            self._graph = StepGraph(self._compiled, tokens, cache)
        logits = self._graph.replay(tokens, cache.length if self._pos is None else None)
        self._pos = self._graph.pos  # advanced on the device from now on, until a prefill or a rollback
        cache.length += 1
        return logits

    def verify(self, block: torch.Tensor) -> torch.Tensor:
        """k tokens per row (B, k) after the cached positions in one forward; the logits after each (B, k, V)."""
        if self.static:
            raise ValueError("a compiled engine steps one token at a time")
        self._record(block)
        return self.model(block, kv_cache=self.cache)

    def _record(self, ids: torch.Tensor) -> None:
        """Note ids (B, t) as encoded after the cached positions (reuse_prefix only)."""
        if self._fed is not None:
            self._fed.append(ids)

    @property
    def length(self) -> int:
        """Positions cached."""
        return 0 if self.cache is None else self.cache.length

    def rollback(self, length: int) -> None:
        """Forget cached positions from `length` on (rejected drafts; a sliding window empties the cache)."""
        self.cache.rollback(length)
        self._pos = None
        if self._fed is not None:
            self._fed = [torch.cat(self._fed, dim=1)[:, :length]]

    def reorder(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes old row index[i] (beam search)."""
        self.cache.reorder(index)
        if self._fed is not None:
            self._fed = [torch.cat(self._fed, dim=1).index_select(0, index)]

    def close(self) -> None:
        """Free the cache and the CUDA graph captured over it (the compiled function stays, for a later compiled
        open)."""
        self.cache, self.static, self._pos, self._graph, self._fed = None, False, None, None, None


def check_finite(logits: torch.Tensor) -> torch.Tensor:
    """A prompt's next-token logits (B, V), refused when they are not numbers (weights holding NaN or infinities, a
    float range overflowed): greedy would print nothing from them and sampling fail inside torch.multinomial."""
    if not bool(torch.isfinite(logits).all()):  # (once a prompt)
        raise ArlmError(
            "the model's logits after the prompt are NaN or infinite: its weights hold NaN or infinite values, "
            "or its computation overflows at this --dtype; nothing can be decoded from them"
        )
    return logits


def shared_beginning(held: list[int], prompt: list[int]) -> int:
    """How many leading ids of the prompt a cache holding `held` has already, leaving at least the prompt's last id to
    encode (its logits choose the first new token): what reuse_prefix keeps, here and in the batch's slots."""
    n = 0
    for a, b in zip(held, prompt[:-1]):
        if a != b:
            break
        n += 1
    return n


def engine_for(model: torch.nn.Module | Engine) -> tuple[Engine, bool]:
    """The engine to decode with: the one given, or a new one over the model; and whether the caller owns it
    (and so closes it when done)."""
    if isinstance(model, Engine):
        return model, False
    return Engine(model), True
