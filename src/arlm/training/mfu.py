"""Model FLOPs utilisation: the model's training FLOPs per token against the device's dense peak."""

from __future__ import annotations

import torch

# Dense peak TFLOP/s by device name fragment: (bf16/fp16 tensor cores, tf32 for float32 matmuls).
PEAK_TFLOPS = {
    "H200": (989.0, 494.0),
    "H100 SXM": (989.0, 494.0),
    "H100 NVL": (835.0, 418.0),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.0),
    "GH200": (989.0, 494.0),
    "B200": (2250.0, 1100.0),
    "A100": (312.0, 156.0),
    "A10G": (70.0, 35.0),
    "A10": (125.0, 62.5),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "RTX 4090": (165.2, 82.6),
    "RTX 3090": (71.0, 35.6),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
}


def peak_flops(device: torch.device, dtype: str, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of the device for the training dtype (None when unknown: CPUs, unlisted GPUs)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (half, single) in PEAK_TFLOPS.items():
        if fragment in name:
            return (half if dtype in ("bfloat16", "float16") else single) * 1e12
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over peak, or None when the peak is unknown."""
    return None if not peak else tokens_per_s * flops_per_token / peak
