"""A weight layout for small-batch decoding on CPU.

Decoding one token multiplies a (1, in) row by every weight matrix: a matrix-vector product bound by memory
bandwidth. PyTorch's CPU kernel for that shape (MKL sgemm with M=1) runs on one thread and reads about
16 GB/s here; the same product split into `chunks` column blocks and done as one batched matmul runs on every
thread and reads about 30 GB/s (docs/perf.md). `optimize_for_decoding` swaps each Linear of a model for that
layout. The result is for inference only: its state dict is not a checkpoint's.

With `batch_invariant=True` the layout is also batch-invariant: a BLAS's batched matmul gives a row the same bits
whatever rows are beside it only where it computes that row with the same kernel, and it picks kernels by the number of
rows (a single row: a matrix-vector product; MKL on AVX2 blocks 4 rows at a time and rounds the remainder otherwise),
so the rows are padded with zero rows (dropped after) to a multiple found by a probe per weight shape at load, or
computed one at a time where no padding makes them agree. Continuous batching needs that to be exact
(a sequence decoded alone and among others get identical logits; `arlm serve` asks for it, docs/serving.md), and so does
speculative verification in 16 bits (k rows verified must give the bits k one-row steps give; the default for 16-bit
weights). Leaving it off made float32 one-row steps 1.07-1.38x faster (docs/perf.md), so float32 batch-1 decoding leaves
it off: there a verification and the steps agree up to float32 rounding, which changes a token only at an exact tie of
the top two logits (as CPU attention's own 1e-7 differences already do). That is the layout where arlm's kernels are not
built (model/native.py); where they are:

float32 weights take arlm's own kernel where it is built (`NativeLinear`): 0.87-0.91x the chunked layout's speed for one
row, faster for several, batch-invariant by construction, and what lets a float32 block fuse (below). A head tied to the
embedding is packed too, the embedding then gathering its rows from the packed table (`PackedEmbedding`). bfloat16
weights (sizes multiples of 32) take arlm's own kernel too (`NativeLinear`, model/native.py): on AMX tiles where the CPU
has them, where it reads the weight at the memory's speed, costs about the same for 1 to 16 rows, and is batch-invariant
by construction at every number of rows; about twice as fast as oneDNN's `linear` for 1-16 rows there (docs/perf.md);
else widened to float32 in vectors, k in order. Other 16-bit weights ask the CPU's own kernel: where oneDNN's 16-bit
`linear` is batch-invariant already (one row and up to PROBE_ROWS rows give every row the same bits, probed once per
weight shape at load), the Linear is kept as it is: it is invariant for free and faster than the chunked layout, one row
or eight (docs/perf.md). Only where the probe fails (another CPU, another oneDNN) does a 16-bit Linear take the chunked,
padded layout. RMSNorm layers take arlm's one-call kernel (`NativeRMSNorm`) where it is built. Last, a Llama block whose
norms and Linears all ended on arlm's kernels (float32, bfloat16, int8, int4) becomes a `FusedBlock`: a cached forward
over up to STEPWISE_QUERIES tokens runs the whole block in one kernel call (block.c), with the bits its modules give
(tested), where Python and PyTorch's small ops cost about as much as the products (docs/perf.md); where every block is
one, the model's blocks become `FusedBlocks`, all of them one call.
"""

from __future__ import annotations

import ctypes
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from arlm.model import native
from arlm.model.attention import kv_buffers
from arlm.model.quant import Int4Linear, Int8Linear
from arlm.model.transformer import Block, Blocks, RMSNorm

if TYPE_CHECKING:
    from arlm.model.kv_cache import CacheView, Rope

PROBE_ROWS = 32  # rows a step must be batch-invariant for by default: a verification of up to STEPWISE_QUERIES tokens


class ChunkedLinear(nn.Module):
    """y = x W^T + b with W stored as (chunks, in, out / chunks): one bmm over the chunks, all threads busy."""

    def __init__(self, linear: nn.Linear, chunks: int, batch_invariant: bool = False, rows: int = PROBE_ROWS) -> None:
        super().__init__()
        out_features, in_features = linear.weight.shape
        self.chunks, self.batch_invariant = chunks, batch_invariant
        self.out_features, self.in_features = out_features, in_features
        blocks = linear.weight.detach().t().reshape(in_features, chunks, out_features // chunks)  # (in, c, out/c)
        self.weight = nn.Parameter(blocks.permute(1, 0, 2).contiguous(), requires_grad=False)  # (c, in, out/c)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.pad = _invariant_padding(self.weight, rows) if batch_invariant else 1  # None: one row at a time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        rows = x.reshape(-1, x.shape[-1])  # (M, in)
        if self.pad is None:  # no padding made this CPU's bmm invariant: every row alone, as the same first row of 2
            y = torch.cat([_padded_bmm(row[None], self.weight, 2) for row in rows]) if len(rows) else rows[:, :0]
        else:
            y = _padded_bmm(rows, self.weight, self.pad)  # (M, c, out/c)
        y = y.reshape(*x.shape[:-1], self.out_features)  # (..., out)
        return y if self.bias is None else y + self.bias


def _padded_bmm(rows: torch.Tensor, weight: torch.Tensor, pad: int) -> torch.Tensor:
    """rows (M, in) times chunked weights (c, in, out/c), M padded with zero rows to a multiple of `pad` for the
    product (dropped after) -> (M, c, out/c)."""
    extra = -len(rows) % pad
    padded = torch.cat([rows, rows.new_zeros(extra, rows.shape[1])]) if extra else rows  # (M + extra, in)
    y = torch.bmm(padded[None].expand(len(weight), -1, -1), weight)  # (c, M + extra, out/c)
    return y[:, : len(rows)].permute(1, 0, 2)


_PADDINGS: dict[tuple, int | None] = {}  # (shape, dtype, rows) -> what `_invariant_padding` found


def _invariant_padding(weight: torch.Tensor, rows: int) -> int | None:
    """The least row padding (2, 4, 8 or 16) with which this CPU's bmm gives every row the same bits alone and among
    up to `rows` rows, for chunked weights (c, in, out/c) of this shape (probed once per shape: BLAS kernels block rows
    by shape, e.g. 4 at a time, and round a block's remainder differently), None where none does."""
    key = (tuple(weight.shape), weight.dtype, rows)
    if key not in _PADDINGS:
        agree = (
            pad for pad in (2, 4, 8, 16) if _rows_agree(lambda x, pad=pad: _padded_bmm(x, weight, pad), weight, rows)
        )
        _PADDINGS[key] = next(agree, None)
    return _PADDINGS[key]


def _rows_agree(product: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor, rows: int) -> bool:
    """Whether `product` of seeded random rows (rows, in), in = weight.shape[1], gives every row the same bits alone,
    in every prefix of the rows and among all of them."""
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight)  # (rows, in)
    with torch.no_grad():
        together = product(x)
        prefixes = all(torch.equal(product(x[:m]), together[:m]) for m in range(1, rows))
        return prefixes and all(torch.equal(product(x[i : i + 1]), together[i : i + 1]) for i in range(rows))


class NativeLinear(nn.Module):
    """y = x W^T + b on arlm's kernels, batch-invariant: a float32 W, packed 16 outputs to a line (`pack`; else read
    where it is, for a weight another Linear shares), or a bfloat16 W (both sizes multiples of 32) in AMX
    tiles."""

    def __init__(self, linear: nn.Linear, pack: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        weight = linear.weight.detach()
        # the kernel's kind (kernels.h): 0 bfloat16 tiles, 3 float32 (out, in), 4 float32 packed
        self.kind = 0 if weight.dtype == torch.bfloat16 else 4 if pack else 3
        if self.kind == 0:
            self.register_buffer("tiles", native.bf16_tiles(weight))  # (out/16, in/32, 16, 16, 2)
        elif self.kind == 4:
            self.register_buffer("packed", native.pack_f32(weight))  # (ceil(out/16), in, 16)
        else:
            self.register_buffer("weight", weight.contiguous())  # (out, in): the Linear's storage, shared
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """Whether a Linear can take this layout: float32 on the CPU with the kernels built, or bfloat16 with sizes
        multiples of 32 and the kernels built."""
        if linear.weight.dtype == torch.float32:
            return linear.weight.is_cpu and native.available()
        sizes = all(size % 32 == 0 for size in linear.weight.shape)
        return linear.weight.dtype == torch.bfloat16 and sizes and native.available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        rows = x.reshape(-1, self.in_features).contiguous()  # (M, in)
        if self.kind == 0:
            y = native.bf16_mm(rows, self.tiles)  # (M, out)
        elif self.kind == 4:
            y = native.f32p_mm(rows, self.packed, self.out_features)
        else:
            y = native.f32_mm(rows, self.weight)
        y = y.reshape(*x.shape[:-1], self.out_features)  # (..., out)
        return y if self.bias is None else y + self.bias


class PackedEmbedding(nn.Module):
    """An embedding whose table is a packed float32 head's (a tied head, `NativeLinear` kind 4): row v is lane v % 16
    of tile v // 16, gathered (the same values the table held), so the head reads the table packed with no second
    copy."""

    def __init__(self, head: NativeLinear) -> None:
        super().__init__()
        self._head = (head,)  # in a tuple: not a child module (the head stays the model's, listed once)

    @property
    def weight(self) -> torch.Tensor:
        """The packed table (ceil(V/16), C, 16), for what asks an embedding's dtype and device."""
        return self._head[0].packed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., C) rows of the table"""
        return self._head[0].packed[ids // native.PACK, :, ids % native.PACK]


class NativeRMSNorm(nn.Module):
    """An RMSNorm on arlm's kernel (one call, not PyTorch's seven ops a row) for rows of its weight's dtype (float32
    or bfloat16) outside autograd; other rows go to the module it replaces."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.norm, self.eps, self.dtype = norm, norm.eps, norm.weight.dtype
        self.vector = norm.weight.detach()  # (C,) a plain attribute, read with no module lookup: this runs 61x a token

    @property
    def weight(self) -> torch.Tensor:
        """The norm's weight (C,), as the module it replaces holds it."""
        return self.vector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)"""
        if x.dtype != self.dtype or x.requires_grad:
            return self.norm(x)
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # (M, C)
        return native.rms_norm(rows, self.vector, self.eps).reshape(x.shape)


class FusedBlock(nn.Module):
    """A Llama block whose norms and Linears all run on arlm's kernels (`fits`), run as one call (block.c) for cached
    decoding steps and verifications, with the bits the block's modules give; other calls (a long prefill, training)
    go to the block as it is."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block
        self.dtype = block.norm1.dtype
        self._packed: tuple[native.BlockWeights, tuple[torch.Tensor, ...]] | None = None

    @staticmethod
    def fits(block: nn.Module) -> bool:
        """Whether a block can run as one call: RMSNorms and Linears on arlm's kernels, all for one dtype, SwiGLU."""
        if not isinstance(block, Block) or not block.mlp.swiglu or block.attn.backend != "sdpa":
            return False
        norms = [block.norm1, block.norm2]
        if not all(isinstance(norm, NativeRMSNorm) for norm in norms):
            return False
        kinds = [_kind(layer) for layer in _linears(block)]
        dtype = torch.bfloat16 if kinds[0] == 0 else torch.float32
        same = all(kind is not None and (kind == 0) == (kinds[0] == 0) for kind in kinds)
        return same and all(norm.dtype == dtype for norm in norms) and block.attn.head_dim % 16 == 0

    def _weights(self) -> native.BlockWeights:
        """The block's weights for the kernel, packed on first use and again after the model moved (`_apply`)."""
        if self._packed is None:
            layers = _linears(self.block)
            norms = (self.block.norm1.vector, self.block.norm2.vector)
            linears = [native.linear_weights(_kind(layer), *_tensors(layer), **_shape(layer)) for layer in layers]
            tensors = norms + tuple(t for layer in layers for t in _tensors(layer))  # what the pointers point into
            self._packed = (native.block_weights(norms, linears, self.block.norm1.eps), tensors)
        return self._packed[0]

    def __getattr__(self, name: str) -> Any:
        """The block's parts (attn, mlp, norm1, ...) read through, as from the Block it stands for."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "block":  # not set yet (a copy being built): no block to read through
                raise
            return getattr(self.block, name)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FusedBlock:
        """Module.to / .float / ...: the tensors may be replaced, so the packed pointers are dropped first."""
        self._packed = None
        return super()._apply(fn, recurse)

    def one_call(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> native.Attention | None:
        """The attention call of a forward over rows x (B, T, C) that runs on the block kernel (a cached step or
        verification of this block's dtype, no gradient), None for a forward that goes to the modules."""
        attn = self.block.attn
        if x.dtype != self.dtype or x.requires_grad or not attn.native_attends(x, rope, kv_cache, start):
            return None
        return attn.native_call(x, rope, mask, kv_cache, start)[0]  # what the call points into is kept by native_call

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), as Block.forward."""
        call = self.one_call(x, rope, mask, kv_cache, start)
        if call is None:
            return self.block(x, rope, mask, is_causal, kv_cache, start)
        return native.block(self._weights(), x.contiguous(), call)


class FusedBlocks(Blocks):
    """A model's blocks when every one is a FusedBlock at its own cache layer (0, 1, ...): a cached step or
    verification runs them all in one kernel call (block.c's arlm_blocks), with the bits one call a block gives; other
    calls go block by block."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__(blocks)
        self._packed: tuple[ctypes.Array, list[native.BlockWeights]] | None = None

    @staticmethod
    def fits(blocks: nn.Module) -> bool:
        """Whether blocks can run as one call: FusedBlocks of one dtype at cache layers 0, 1, ... in order."""
        fused = all(isinstance(block, FusedBlock) and block.attn.layer == i for i, block in enumerate(blocks))
        return fused and len(blocks) > 0 and len({block.dtype for block in blocks}) == 1

    def _weights(self) -> ctypes.Array:
        """Every block's weights for the kernel, in one array: gathered again whenever a block packed afresh (after
        `_apply` on the model or on a block alone), so it never points into tensors a block let go."""
        current = [block._weights() for block in self]
        if self._packed is None or any(now is not then for now, then in zip(current, self._packed[1])):
            self._packed = ((native.BlockWeights * len(current))(*current), current)
        return self._packed[0]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FusedBlocks:
        """Module.to / .float / ...: each block packs afresh, and so does the array."""
        self._packed = None
        return super()._apply(fn, recurse)

    def run(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C) through every block, as Blocks.run."""
        call = self[0].one_call(x, rope, mask, kv_cache, start)
        if call is None:
            return super().run(x, rope, mask, is_causal, kv_cache, start)
        keys = kv_buffers(kv_cache).k  # (layers, rows, nkv, L, hd): each layer one stride on
        return native.blocks(self._weights(), x.contiguous(), call, keys.stride(0) * keys.element_size())


def _linears(block: Block) -> list[nn.Module]:
    """A block's Linears in the kernel's order: qkv, proj, up, down."""
    return [block.attn.qkv, block.attn.proj, block.mlp.up, block.mlp.down]


def _kind(layer: nn.Module) -> int | None:
    """The kernel kind of a Linear on arlm's kernels, without bias (kernels.h: 0 bfloat16 tiles, 1 int8, 2 int4,
    3 float32, 4 float32 packed, 5 int8 in groups of 32), None for others."""
    if isinstance(layer, NativeLinear) and layer.bias is None:
        return layer.kind
    if isinstance(layer, (Int8Linear, Int4Linear)) and layer.native and layer.bias is None:
        return 2 if isinstance(layer, Int4Linear) else 5 if layer.group_size else 1
    return None


def _tensors(layer: nn.Module) -> tuple[torch.Tensor, ...]:
    """The tensors the kernel reads of a Linear `_kind` accepts."""
    if isinstance(layer, NativeLinear):
        return (layer.tiles if layer.kind == 0 else layer.packed if layer.kind == 4 else layer.weight,)
    if isinstance(layer, Int4Linear):
        return layer.packed, layer.scales_and_lows
    return (layer.packed, layer.group_scales) if layer.group_size else (layer.packed, layer.scales)


def _shape(layer: nn.Module) -> dict:
    """An int8 / int4 layer's group size and weight shape, a packed float32 one's shape, for `native.linear_weights`
    (none for the others)."""
    if isinstance(layer, NativeLinear):
        return {"shape": (layer.out_features, layer.in_features)} if layer.kind == 4 else {}
    if not isinstance(layer, (Int8Linear, Int4Linear)):
        return {}
    return {"group": getattr(layer, "group_size", 0), "shape": (layer.out_features, layer.in_features)}


_PROBED: dict[tuple, bool] = {}  # (shape, dtype, device type, rows) -> what the probe found


def linear_is_batch_invariant(weight: torch.Tensor, rows: int = PROBE_ROWS) -> bool:
    """Whether F.linear on this CPU gives each row the same bits alone and among 2..rows rows, for weights of this
    one's shape and dtype (probed once per shape: kernels pick their blocking by shape, not by value)."""
    key = (tuple(weight.shape), weight.dtype, weight.device.type, rows)
    if key not in _PROBED:
        _PROBED[key] = _rows_agree(lambda x: F.linear(x, weight), weight, rows)
    return _PROBED[key]


def optimize_for_decoding(
    model: nn.Module, chunks: int | None = None, batch_invariant: bool | None = None, rows: int = PROBE_ROWS
) -> nn.Module:
    """Re-lay out every Linear (and RMSNorm) of a CPU model for fast small-batch decoding, Dropout layers dropped (in
    place; no-op on GPU); batch_invariant: a row's logits do not depend on the rows beside it, in steps of up to
    `rows` rows (None: for 16-bit weights only)."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        return model
    if batch_invariant is None:
        batch_invariant = next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    chunks = chunks or max(torch.get_num_threads(), 1)
    owners = Counter(id(p) for module in model.modules() for p in module.parameters(recurse=False))
    children = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]
    tables = {id(m.weight): (parent, name) for parent, name, m in children if isinstance(m, nn.Embedding)}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):  # inference: no dropout, and no call to find that out per layer
                setattr(parent, name, nn.Identity())
            if isinstance(child, RMSNorm) and child.weight.dtype in native.ROW_DTYPES and native.available():
                setattr(parent, name, NativeRMSNorm(child))
            if not isinstance(child, nn.Linear):
                continue
            if NativeLinear.fits(child):
                _native_linear(parent, name, child, owners[id(child.weight)], tables.get(id(child.weight)))
                continue
            if _invariant_as_is(child, rows):
                continue
            # every other Linear, so that every one is batch-invariant
            setattr(parent, name, ChunkedLinear(child, math.gcd(child.out_features, chunks), batch_invariant, rows))
    blocks = getattr(model, "blocks", [])
    for i, block in enumerate(blocks):
        if FusedBlock.fits(block):
            blocks[i] = FusedBlock(block)
    if isinstance(blocks, Blocks) and FusedBlocks.fits(blocks):
        model.blocks = FusedBlocks(blocks)
    return model


def rows_invariant(model: nn.Module) -> bool:
    """Whether every layer of a model that works row by row (the blocks' norms and Linears, the last norm, the head)
    runs on arlm's kernels, which give a row the same bits whatever number of rows share the call: then several
    sequences' rows may share one forward (Transformer.prefill_many) with each sequence's bits."""
    blocks, norm, head = (getattr(model, name, None) for name in ("blocks", "norm", "lm_head"))
    return isinstance(blocks, FusedBlocks) and isinstance(norm, NativeRMSNorm) and _kind(head) is not None


def optimize_for_scoring(model: nn.Module) -> nn.Module:
    """A 16-bit CPU model on the decoding layout (optimize_for_decoding), for scoring whole windows: scored by the
    kernels generate samples with (bfloat16: arlm's, on CPUs without bfloat16 arithmetic ~6x faster than PyTorch's
    bfloat16 matmuls, docs/perf.md; float16 keeps PyTorch's); float32 and quantized models stay as they are (MKL's
    float32 products are faster over long windows than the decoding layout's; the int8 / int4 layers are arlm's
    kernels already)."""
    weight = next(model.parameters())
    if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
        optimize_for_decoding(model)
    return model


def _native_linear(parent: nn.Module, name: str, linear: nn.Linear, owners: int, table: tuple | None) -> None:
    """parent.name = the Linear on arlm's kernels: packed, and where its weight is an embedding's table (tied) the
    embedding reads the packed table (`PackedEmbedding`); shared any other way, read in place (no second copy)."""
    tied = owners == 2 and table is not None
    layer = NativeLinear(linear, pack=owners == 1 or tied)
    setattr(parent, name, layer)
    if tied and layer.kind == 4:  # (bfloat16 tiles are a layout of their own, beside the table)
        setattr(*table, PackedEmbedding(layer))


def _invariant_as_is(linear: nn.Linear, rows: int) -> bool:
    """A 16-bit Linear whose CPU kernel is batch-invariant already up to `rows` rows (module docstring): kept."""
    sixteen = linear.weight.dtype in (torch.bfloat16, torch.float16)
    return sixteen and linear_is_batch_invariant(linear.weight.detach(), rows)
