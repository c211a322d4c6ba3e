"""Model FLOPs utilisation: the model's training FLOPs per token against the device's dense peak."""

from __future__ import annotations

import torch

# Dense peak TFLOP/s by device name fragment (the longest fragment in the name wins: "L40S" before "L40" before
# "L4"): 16-bit tensor cores (bf16 / fp16), tf32 tensor cores (float32 matmuls where TF32 is allowed), plain fp32.
PEAK_TFLOPS = {
    "H200 NVL": (835.0, 418.0, 60.0),
    "H200": (989.0, 494.0, 67.0),
    "H100 SXM": (989.0, 494.0, 67.0),
    "H100 NVL": (835.0, 418.0, 60.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100": (989.0, 494.0, 67.0),
    "GH200": (989.0, 494.0, 67.0),
    "B200": (2250.0, 1100.0, 75.0),
    "A100": (312.0, 156.0, 19.5),
    "A10G": (70.0, 35.0, 31.2),
    "A10": (125.0, 62.5, 31.2),
    "L40S": (362.0, 183.0, 91.6),
    "L40": (181.0, 90.5, 90.5),
    "L4": (121.0, 60.0, 30.3),
    "RTX 4090": (165.2, 82.6, 82.6),
    "RTX 3090": (71.0, 35.6, 35.6),
    "V100": (125.0, 15.7, 15.7),
    "T4": (65.0, 8.1, 8.1),
}


def peak_flops(device: torch.device, dtype: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of the device for the training dtype (None when unknown: CPUs, unlisted GPUs); float32's is the
    TF32 peak only where PyTorch is allowed TF32 for matmuls (its default is not: true fp32)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    peaks = device_peaks(torch.cuda.get_device_name(device))
    if peaks is None:
        return None
    half, tf32, fp32 = peaks
    if dtype in ("bfloat16", "float16"):
        return half * 1e12
    return (tf32 if tf32_allowed() else fp32) * 1e12


def device_peaks(name: str) -> tuple[float, float, float] | None:
    """(16-bit, tf32, fp32) dense TFLOP/s of the GPU named `name`, by the longest fragment of the table in it."""
    fragments = [fragment for fragment in PEAK_TFLOPS if fragment in name]
    return PEAK_TFLOPS[max(fragments, key=len)] if fragments else None


def tf32_allowed() -> bool:
    """Whether float32 matmuls on CUDA may run on TF32 tensor cores: torch.backends.cuda.matmul.fp32_precision
    'tf32' (PyTorch's newer switch), else allow_tf32 or a float32 matmul precision below 'highest' (the older ones,
    which PyTorch refuses to read once the newer one was set)."""
    matmul = torch.backends.cuda.matmul
    if getattr(matmul, "fp32_precision", None) == "tf32":
        return True
    try:
        return bool(matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # the newer switch was set (to something other than tf32): no TF32
        return False


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over peak, or None when the peak is unknown."""
    return None if not peak else tokens_per_s * flops_per_token / peak
