"""Weight-only quantized linear layers on the kernels PyTorch ships for the CPU.

- `Int8Linear`: int8 weights with one float scale per output channel, `torch._weight_int8pack_mm`.
- `Int4Linear`: 4-bit codes q in 0..15 per group of 32 or 64 inputs with a scale and a zero per group, the
  weight being (q - 8) * scale + zero, `torch._weight_int4pack_mm_for_cpu` on the packing of
  `torch._convert_weight_to_int4pack_for_cpu`. GGUF's Q4_1 blocks (d * q + m) are that convention with
  scale d and zero m + 8d, Q4_0's (d * (q - 8)) with zero 0, so `Int4Linear.from_codes` builds a layer from a
  file's blocks without dequantizing and requantizing them (interop/gguf.py).

The kernels read their inputs, scales and zeros in bfloat16 where the CPU computes in bfloat16 natively (AVX512-BF16 or
AMX): there they are 20-35x faster than with float32 inputs (docs/perf.md, "Decoding against llama.cpp, per precision"),
so a layer rounds its input rows and its scales and zeros to bfloat16, and its output comes back in bfloat16 precision,
returned in the input's dtype (the residual stream, norms and attention stay in the model's float dtype). Elsewhere
everything stays float32 (`compute_dtype`). `dequantized()` is the weight the kernel multiplies by, those roundings
included. Both kernels are batch-invariant here: a row's output bits do not depend on the other rows or on how many
there are, one row included (tests/model/test_quant.py checks it), so no ChunkedLinear-style padding is needed for
continuous batching. The kernels run on the CPU only. The result is for inference: its state dict is not a checkpoint's.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from arlm.errors import ArlmError

QUANT_KINDS = ("int8", "int4")
GROUP_SIZES = (32, 64)


@functools.cache
def compute_dtype() -> torch.dtype:
    """The dtype the weight-only kernels read: bfloat16 where oneDNN has a native bfloat16 path, else float32."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def _rounded(values: torch.Tensor) -> torch.Tensor:
    """Float32 values rounded to what the kernels read (`compute_dtype`), kept in float32."""
    return values.float().to(compute_dtype()).float()


class Int8Linear(nn.Module):
    """y = x (scale * W_int8)^T + b, one scale per output channel."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.to(torch.int8).contiguous())  # (out, in)
        self.register_buffer("scales", scales.to(compute_dtype()).contiguous())  # (out,)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, linear: nn.Module) -> Int8Linear:
        """Symmetric per-channel quantization of a Linear's weight (round to nearest, scale = max|w| / 127)."""
        weight = linear.weight.detach().float()  # (out, in)
        scales = _rounded((weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny))  # (out,)
        codes = torch.round(weight / scales[:, None]).clamp(-127, 127)
        return cls(codes, scales, linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the layer multiplies by: (out, in)."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        rows = x.reshape(-1, self.in_features).to(self.scales.dtype)  # (M, in)
        y = torch._weight_int8pack_mm(rows, self.weight, self.scales)  # (M, out)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int4Linear(nn.Module):
    """y = x W^T + b with W[n, k] = (q[n, k] - 8) * scale[n, g] + zero[n, g], g = k // group_size."""

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        out_features, in_features = codes.shape
        check_int4_shape(out_features, in_features, group_size)
        self.out_features, self.in_features, self.group_size = out_features, in_features, group_size
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)  # (out, in/2)
        self.register_buffer("packed", packed)
        pairs = torch.stack([scales, zeros], dim=-1).to(compute_dtype())  # (out, in/G, 2)
        self.register_buffer("scales_and_zeros", pairs.transpose(0, 1).contiguous())  # (in/G, out, 2)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bias=None
    ) -> Int4Linear:
        """A layer from 4-bit codes (out, in) in 0..15 and per-group scales and zeros (out, in / group_size)."""
        return cls(codes, scales, zeros, group_size, bias)

    @classmethod
    def from_float(cls, linear: nn.Module, group_size: int = 32) -> Int4Linear:
        """Asymmetric min/max quantization per group (as GGUF's Q4_1): 16 levels from the group's min to max."""
        weight = linear.weight.detach().float()  # (out, in)
        out_features, in_features = weight.shape
        check_int4_shape(out_features, in_features, group_size)
        groups = weight.reshape(out_features, in_features // group_size, group_size)  # (out, in/G, G)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (out, in/G)
        scales = _rounded(((high - low) / 15).clamp(min=torch.finfo(torch.bfloat16).tiny))
        zeros = _rounded(low + 8 * scales)  # the levels are (q - 8) * scale + zero, as the kernel reads them
        codes = torch.round((groups - (zeros - 8 * scales)[..., None]) / scales[..., None]).clamp(0, 15)
        return cls(codes.reshape(out_features, in_features), scales, zeros, group_size, linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the layer multiplies by: (out, in), computed by the kernel's float32 path on the
        identity (exact: the scales and zeros it reads are float32 copies of the rounded ones)."""
        eye = torch.eye(self.in_features)  # (in, in)
        pairs = self.scales_and_zeros.float()
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, pairs).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)"""
        rows = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)  # (M, in)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_and_zeros)  # (M, out)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def check_int4_shape(out_features: int, in_features: int, group_size: int) -> None:
    """Refuse a shape the int4 kernel cannot hold (group size 32 or 64 dividing the inputs, outputs by 16)."""
    if group_size not in GROUP_SIZES:
        raise ArlmError(f"int4 group size {group_size} is not supported; use one of {GROUP_SIZES}")
    if in_features % group_size or out_features % 16:
        raise ArlmError(
            f"a {out_features}x{in_features} weight cannot be quantized to int4 in groups of {group_size}: "
            "the inputs must be a multiple of the group size and the outputs of 16"
        )


def quantize_model(model: nn.Module, kind: str, group_size: int = 32, head: bool = True) -> nn.Module:
    """Swap every nn.Linear of a CPU model for its int8 or int4 layer (in place). The output head `lm_head` is int8
    for both kinds (int4 there costs SmolLM2 4.9% of perplexity, int8 0.2%: docs/perf.md); head=False keeps it in
    float. Layers already quantized (built from a file's blocks) are kept as they are."""
    if kind not in QUANT_KINDS:
        raise ArlmError(f"unknown quantization {kind!r}; use one of {', '.join(QUANT_KINDS)}")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ArlmError(f"{kind} weights run on the CPU only (PyTorch's weight-only kernels); use --device cpu")
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
