"""Weight-only quantized linear layers: int8 and int4 on the CPU, int8 on a GPU.

- `Int8Linear`: int8 weights with one float scale per output channel, or (a GGUF file's Q8_0 blocks, kept as they
  are on arlm's kernels) one float16 scale per group of 32 inputs.
- `Int4Linear`: 4-bit codes q in 0..15 per group of 32 or 64 inputs, with a scale and a low per group: the weight is
  q * scale + low, GGUF's Q4_1 convention (d * q + m); Q4_0's d * (q - 8) is scale d and low -8d. So
  `Int4Linear.from_codes` builds a layer from a file's blocks without dequantizing and requantizing them
  (interop/gguf_quant.py).

Two kernel sets, chosen when a layer is built:
- arlm's own (model/quantized.c, where this CPU and compiler can build them): integer dot products of the codes by
  the rows read at 16 bits per group of inputs (int8: 64 where that divides the inputs, else 32; int4 and Q8_0: their
  levels' group, 32 or 64; each value within 1/65,278 of its group's largest), int8 scales in float32, int4 and Q8_0
  levels in float16 (a GGUF file's held exactly), float32 output; batch-invariant by construction (docs/perf.md,
  "arlm's own kernels").
- PyTorch's (`torch._weight_int8pack_mm`, `torch._weight_int4pack_mm_for_cpu`), elsewhere. They read their inputs,
  scales and zeros in bfloat16 where the CPU computes in bfloat16 natively (AVX512-BF16 or AMX), 20-35x faster there
  than with float32 inputs, so a layer then rounds its input rows and its scales and zeros to bfloat16
  (`compute_dtype`) and its output comes back in bfloat16 precision. They too are batch-invariant on the CPUs tested
  (tests/model/test_quant.py).

On a GPU an int8 layer keeps its codes (out, in) as they are and its scales in the model's float dtype (bfloat16 for
--dtype int8 there): y = linear(x, codes widened) * scales. The compiled step (coordinate descent tuning, the engine's
default on a GPU) fuses the widening and the scaling into Triton reductions that read the int8 codes (docs/perf.md,
H200); eager, the widened copy is made at every call: correct, not fast.

`kernel_dtype()` is the dtype a CPU layer built now reads its inputs and levels in; `dequantized()` is the weight the
kernel multiplies by, every rounding included. Either way a layer returns its output in the input's dtype (the residual
stream, norms and attention stay in the model's float dtype) and is for inference: its state dict is not a checkpoint's.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from arlm.errors import ArlmError
from arlm.model import int_layout, native

QUANT_KINDS = ("int8", "int4")
GROUP_SIZES = (32, 64)


@functools.cache
def compute_dtype() -> torch.dtype:
    """The dtype PyTorch's weight-only kernels read: bfloat16 where oneDNN has a native bfloat16 path, else float32."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def kernel_dtype() -> torch.dtype:
    """The dtype the kernels of a layer built now take rows in: float32 for arlm's own (which read them at 16 bits per
    group of 32 or 64 inputs, model/quantized.c)."""
    return torch.float32 if native.available() else compute_dtype()


def _rounded(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float32 values rounded to dtype (what a kernel reads), kept in float32."""
    return values.float().to(dtype).float()


def q8_0_fits(out_features: int, in_features: int) -> bool:
    """Whether arlm's kernels can hold a weight of GGUF's Q8_0 blocks as it is: built here, the inputs by 32, the
    outputs by 16 (Int8Linear.from_blocks)."""
    return native.available() and in_features % native.Q8_GROUP == 0 and out_features % 16 == 0


class Int8Linear(nn.Module):
    """y = x (scale * W_int8)^T + b, one scale per output channel (or per group of 32 inputs: GGUF's Q8_0)."""

    def __init__(
        self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None, dense: bool | None = None
    ) -> None:
        """Codes (out, in) in -127..127 and scales (out,), or codes in -128..127 and scales (out, in / 32) (Q8_0's:
        arlm's kernels only, the scales read in float16); dense: the GPU's layout (None: where the codes are not on
        the CPU), else the CPU kernels'."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = 0 if scales.dim() == 1 else native.Q8_GROUP
        self.dense = weight.device.type != "cpu" if dense is None else dense
        self.native = not self.dense and native.available()
        if self.group_size:
            if not self.native or not q8_0_fits(*weight.shape) or self.in_features != native.Q8_GROUP * scales.shape[1]:
                raise ArlmError(f"a {self.out_features}x{self.in_features} Q8_0 weight needs arlm's CPU kernels")
            self.register_buffer("packed", int_layout.pack_int8(weight))  # (out/16, in/32, 8, 16, 4)
            self.register_buffer("group_scales", int_layout.tile_scales(scales))  # (out/16, in/32, 16) float16
        elif self.dense:  # GPU: the codes as they are, widened inside the matmul's input (fused when compiled)
            self.register_buffer("weight", weight.to(torch.int8).contiguous())  # (out, in)
            self.register_buffer("scales", scales.contiguous())  # (out,) in the model's float dtype
        elif self.native:
            self.register_buffer("packed", int_layout.pack_int8(weight))  # (out/16, in/32, 8, 16, 4)
            self.register_buffer("scales", int_layout.pad_outputs(scales))  # (out rounded up to 16,)
        else:  # PyTorch's kernel reads past rows whose width is not a multiple of 16 (a segfault, tested): zero columns
            self.pad = -self.in_features % 16
            weight = torch.nn.functional.pad(weight.to(torch.int8), (0, self.pad))
            self.register_buffer("weight", weight.contiguous())  # (out, in + pad)
            self.register_buffer("scales", scales.to(kernel_dtype()).contiguous())  # (out,)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, linear: nn.Module, group_size: int = 0) -> Int8Linear:
        """Symmetric per-channel quantization of a Linear's weight (round to nearest, scale = max|w| / 127), on the
        weight's device; a GPU layer keeps its scales in the weight's float dtype. group_size 32: a scale per group
        of 32 inputs instead (Q8_0's layout, arlm's kernels only), read in float16."""
        weight = linear.weight.detach().float()  # (out, in)
        if group_size:
            groups = weight.reshape(weight.shape[0], -1, group_size)  # (out, in/G, G)
            scales = _rounded((groups.abs().amax(dim=-1) / 127).clamp(min=2.0**-24), torch.float16)  # (out, in/G)
            codes = torch.round(groups / scales[..., None]).clamp(-127, 127).reshape(weight.shape)
            return cls.from_blocks(codes, scales, linear.bias)
        dtype = kernel_dtype() if weight.is_cpu else linear.weight.dtype
        scales = _rounded((weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny), dtype)
        codes = torch.round(weight / scales[:, None]).clamp(-127, 127)
        return cls(codes, scales.to(dtype), linear.bias)

    @classmethod
    def from_blocks(cls, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """A layer from a GGUF file's Q8_0 blocks: codes (out, in) in -128..127, scales (out, in / 32)."""
        return cls(codes, scales, bias, dense=False)

    def codes(self) -> torch.Tensor:
        """The int8 codes (out, in)."""
        if self.native:
            return int_layout.unpack_int8(self.packed, self.out_features, self.in_features)
        return self.weight if self.dense else self.weight[:, : self.in_features]

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the layer multiplies by: (out, in)."""
        if self.group_size:
            scales = int_layout.untile_scales(self.group_scales)  # (out, in/32)
            return self.codes().float() * scales.repeat_interleave(self.group_size, 1)
        return self.codes().float() * self.scales[: self.out_features].float()[:, None]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The weight's rows `ids` (...) in float32, (..., in), as dequantized() holds them (arlm's kernels' layout)."""
        tile, lane = ids // 16, ids % 16
        codes = self.packed[tile, :, :, lane, :].reshape(*ids.shape, self.in_features)  # (..., in): codes + 128
        values = (codes.to(torch.int16) - 128).float()
        if self.group_size:
            return values * self.group_scales[tile, :, lane].float().repeat_interleave(self.group_size, -1)
        return values * self.scales[ids].float()[..., None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        if self.group_size:
            rows = x.reshape(-1, self.in_features).float().contiguous()  # (M, in)
            y = native.q8_mm(rows, self.packed, self.group_scales)  # (M, out)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        rows = x.reshape(-1, self.in_features).to(self.scales.dtype)  # (M, in)
        if self.dense:
            y = torch.nn.functional.linear(rows, self.weight.to(rows.dtype)) * self.scales  # (M, out)
        elif self.native:
            y = native.int8_mm(rows.contiguous(), self.packed, self.scales, self.out_features)  # (M, out)
        else:
            rows = torch.nn.functional.pad(rows, (0, self.pad)) if self.pad else rows  # (M, in + pad)
            y = torch._weight_int8pack_mm(rows, self.weight, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class QuantEmbedding(nn.Module):
    """An embedding whose table is an int layer's weight on arlm's kernels (Int8Linear, Int4Linear): row v gathered
    from lane v % 16 of tile v // 16 (`rows`), the very values the layer multiplies by, with no float32 copy of the
    table (SmolLM2's: 113 MB). The layer is a tied head (then not a child: the model lists it once) or the table's
    own (owned: a child)."""

    def __init__(self, layer: nn.Module, owned: bool = False) -> None:
        super().__init__()
        if not getattr(layer, "native", False):
            raise ArlmError("a QuantEmbedding reads an int layer on arlm's CPU kernels")
        if owned:
            self.table = layer
        self._layer = (layer,)  # in a tuple: a tied head stays the model's child alone

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., C) float32 rows of the table"""
        return self._layer[0].rows(ids)


class Int4Linear(nn.Module):
    """y = x W^T + b with W[n, k] = q[n, k] * scale[n, g] + low[n, g], g = k // group_size."""

    def __init__(
        self,
        codes: torch.Tensor | None,
        scales: torch.Tensor,
        lows: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
        ours: bool | None = None,
        packed: torch.Tensor | None = None,
    ) -> None:
        """Codes (out, in) in 0..15 with the exact scales and lows (out, in / group_size); ours: on arlm's kernels
        (None: where they are built), else PyTorch's, which read the levels moved by `_levels`; packed: on arlm's
        kernels, the codes already in their layout (`from_q4_bytes`), codes then None."""
        super().__init__()
        out_features, in_features = scales.shape[0], scales.shape[1] * group_size
        check_int4_shape(out_features, in_features, group_size)
        self.out_features, self.in_features, self.group_size = out_features, in_features, group_size
        self.native = native.available() if ours is None else ours
        scales, lows = _levels(scales, lows, self.native)
        if self.native:
            packed = int_layout.pack_int4(codes) if packed is None else packed  # (out/16, in/32, 4, 16, 4)
            self.register_buffer("packed", packed)
            levels = int_layout.tile_levels(scales, lows)  # (out/16, in/G, 2, 16) float16
            self.register_buffer("scales_and_lows", levels)
        else:  # PyTorch's kernel reads (q - 8) * scale + zero
            packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)  # (out, in/2)
            self.register_buffer("packed", packed)
            pairs = torch.stack([scales, lows + 8 * scales], dim=-1).to(compute_dtype())  # (out, in/G, 2)
            self.register_buffer("scales_and_zeros", pairs.transpose(0, 1).contiguous())  # (in/G, out, 2)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        lows: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> Int4Linear:
        """A layer from 4-bit codes (out, in) in 0..15 and per-group scales and lows (out, in / group_size)."""
        return cls(codes, scales, lows, group_size, bias)

    @classmethod
    def from_q4_bytes(
        cls, block_bytes: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor, bias: torch.Tensor | None = None
    ) -> Int4Linear:
        """A layer from GGUF Q4_0 / Q4_1 code bytes (out, in / 2) as the file holds them (16 a block of 32 inputs) and
        the blocks' scales and lows (out, in / 32): on arlm's kernels reordered into their layout, never unpacked
        (`int_layout.pack_q4_bytes`); elsewhere unpacked into codes."""
        if native.available():
            return cls(None, scales, lows, 32, bias, packed=int_layout.pack_q4_bytes(block_bytes))
        return cls(int_layout.q4_codes(block_bytes), scales, lows, 32, bias)

    @classmethod
    def from_float(cls, linear: nn.Module, group_size: int = 32) -> Int4Linear:
        """Asymmetric min/max quantization per group (as GGUF's Q4_1): 16 levels from the group's min to max."""
        weight = linear.weight.detach().float()  # (out, in)
        out_features, in_features = weight.shape
        check_int4_shape(out_features, in_features, group_size)
        groups = weight.reshape(out_features, in_features // group_size, group_size)  # (out, in/G, G)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (out, in/G)
        scales = ((high - low) / 15).clamp(min=2.0**-24)  # (out, in/G); float16's smallest step: never 0 in it
        ours = native.available()
        moved_scales, moved_lows = _levels(scales, low, ours)  # the levels the kernel will read: codes fit those
        codes = torch.round((groups - moved_lows[..., None]) / moved_scales[..., None]).clamp(0, 15)
        return cls(codes.reshape(out_features, in_features), scales, low, group_size, linear.bias, ours)

    def levels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scales and lows (out, in / group_size) as the kernel reads them, in float32."""
        if self.native:
            return int_layout.untile_levels(self.scales_and_lows)
        scales, zeros = self.scales_and_zeros.float().permute(2, 1, 0)  # (out, in/G) each
        return scales, zeros - 8 * scales

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the layer multiplies by: (out, in), q * scale + low (PyTorch's kernel: computed by its
        float32 path on the identity, exact as each output is one weight times 1)."""
        if self.native:
            scales, lows = (v.repeat_interleave(self.group_size, 1) for v in self.levels())  # (out, in)
            return int_layout.unpack_int4(self.packed) * scales + lows
        eye = torch.eye(self.in_features)  # (in, in)
        pairs = self.scales_and_zeros.float()
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, pairs).t()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The weight's rows `ids` (...) in float32, (..., in), as dequantized() holds them (arlm's kernels' layout:
        byte b of vector j of a group of 32 holds inputs 4j + b and 16 + 4j + b)."""
        tile, lane = ids // 16, ids % 16
        packed = self.packed[tile, :, :, lane, :]  # (..., in/32, 4, 4)
        codes = torch.stack([packed & 0x0F, packed >> 4], dim=-3).reshape(*ids.shape, self.in_features)  # (..., in)
        levels = self.scales_and_lows[tile, :, :, lane].float()  # (..., in/G, 2)
        scales, lows = (levels[..., i].repeat_interleave(self.group_size, -1) for i in range(2))  # (..., in)
        return codes.float() * scales + lows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        if self.native:
            rows = x.reshape(-1, self.in_features).float().contiguous()  # (M, in)
            y = native.int4_mm(rows, self.packed, self.scales_and_lows, self.group_size)  # (M, out)
        else:
            rows = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
            y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_and_zeros)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def _levels(scales: torch.Tensor, lows: torch.Tensor, ours: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scales and lows moved to what a kernel reads, in float32: for arlm's own (ours), each rounded to float16
    (as a GGUF file holds them: its levels are kept exactly); for PyTorch's, the scale and the zero (low + 8 * scale)
    each rounded to `compute_dtype`."""
    scales, lows = scales.float(), lows.float()
    if ours:
        return _rounded(scales, torch.float16), _rounded(lows, torch.float16)
    rounded = _rounded(scales, compute_dtype())
    zeros = _rounded(lows + 8 * scales, compute_dtype())  # from the exact scale: |q - 8| <= 8 steps
    return rounded, zeros - 8 * rounded


def int4_fits(out_features: int, in_features: int, group_size: int = 32) -> bool:
    """Whether the int4 kernels can hold a weight of this shape in groups of `group_size` (inputs by the group,
    outputs by 16)."""
    return in_features % group_size == 0 and out_features % 16 == 0


def check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    """Refuse a shape the int4 kernels cannot hold (group size 32 or 64 dividing the inputs, outputs by 16)."""
    if group_size not in GROUP_SIZES:
        raise ArlmError(f"int4 group size {group_size} is not supported; use one of {GROUP_SIZES}")
    if not int4_fits(out_features, in_features, group_size):
        raise ArlmError(
            f"a {out_features}x{in_features} weight cannot be quantized to int4 in groups of {group_size}: "
            "the inputs must be a multiple of the group size and the outputs of 16"
        )


def quantize_model(model: nn.Module, kind: str, group_size: int = 32, head: bool = True) -> nn.Module:
    """Swap every nn.Linear of a model for its int8 or int4 layer (in place; int4 on the CPU only). The output head
    `lm_head` is int8 for both kinds (int4 there costs SmolLM2 4.9% of perplexity, int8 0.2%: docs/perf.md);
    head=False keeps it in float. Layers already quantized (built from a file's blocks) are kept as they are."""
    if kind not in QUANT_KINDS:
        raise ArlmError(f"unknown quantization {kind!r}; use one of {', '.join(QUANT_KINDS)}")
    device = next(model.parameters()).device
    if kind == "int4" and device.type != "cpu":
        raise ArlmError("int4 weights run on the CPU only (arlm's and PyTorch's CPU kernels); use --device cpu")
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            is_head = f"{parent_name}.{name}".lstrip(".") == "lm_head"
            if is_head and not head:
                continue
            int8 = kind == "int8" or is_head
            layer = Int8Linear.from_float(child) if int8 else Int4Linear.from_float(child, group_size)
            setattr(parent, name, layer)
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of the model holds quantized weights."""
    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())
