"""How arlm's int kernels (model/quantized.c) lay out a quantized weight: the codes 16 outputs to a 64-byte vector, 4
consecutive inputs to a lane, in groups of 32 inputs, and their scales (and int4's lows) beside them; each layout
with its inverse, which the tests and `dequantized()` use (model/quant.py builds the layers)."""

from __future__ import annotations

import torch


def _tiles_of(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """Codes (N, K) as uint8, padded with `pad` to whole tiles of 16 outputs and groups of 32 inputs:
    (T, 16, G, 32)."""
    out_features, in_features = codes.shape
    padded = torch.nn.functional.pad(codes.to(torch.int16), (0, -in_features % 32, 0, -out_features % 16), value=pad)
    return padded.to(torch.uint8).reshape(-(-out_features // 16), 16, -(-in_features // 32), 32)


def pack_int8(codes: torch.Tensor) -> torch.Tensor:
    """Signed codes (N, K) -> the int8 kernel's layout (quantized.c), codes + 128: (N/16, K/32, 8, 16, 4) bytes."""
    biased = codes.to(torch.int8).view(torch.uint8) ^ 0x80  # (N, K): c + 128 as a byte, with no wider copy
    n, k = biased.shape
    tiles = torch.nn.functional.pad(biased, (0, -k % 32, 0, -n % 16), value=128)  # 128: a zero weight
    return tiles.reshape(-(-n // 16), 16, -(-k // 32), 8, 4).permute(0, 2, 3, 1, 4).contiguous()


def unpack_int8(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The signed codes (N, K) `pack_int8` laid out."""
    tiles = packed.permute(0, 3, 1, 2, 4).reshape(16 * len(packed), -1)  # (T 16, G 32)
    return (tiles[:out_features, :in_features].to(torch.int16) - 128).to(torch.int8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in 0..15, N by 16 and K by 32 -> the int4 kernel's layout (quantized.c): (N/16, K/32, 4, 16, 4)
    bytes, inputs 4j.. of a group in the low nibbles and 16 + 4j.. in the high ones."""
    tiles = _tiles_of(codes, 0).reshape(len(codes) // 16, 16, -1, 2, 4, 4)  # (T, 16, G, half, j, 4)
    packed = tiles[:, :, :, 0] | (tiles[:, :, :, 1] << 4)  # (T, 16, G, 4, 4)
    return packed.permute(0, 2, 3, 1, 4).contiguous()


def pack_q4_bytes(block_bytes: torch.Tensor) -> torch.Tensor:
    """GGUF Q4_0 / Q4_1 code bytes (N, K / 2), each block's 16 in the file's order, N by 16 and K by 32 -> `pack_int4`'s
    layout, by reordering alone: byte 4j + b of a block holds inputs 4j + b (low nibble) and 16 + 4j + b (high), which
    is the kernel's byte b of vector j."""
    n, half = block_bytes.shape
    return block_bytes.reshape(n // 16, 16, half // 16, 4, 4).permute(0, 2, 3, 1, 4).contiguous()


def q4_codes(block_bytes: torch.Tensor) -> torch.Tensor:
    """GGUF Q4_0 / Q4_1 code bytes (N, K / 2) -> the codes (N, K) in 0..15: each block's low nibbles, then its high."""
    n, half = block_bytes.shape
    blocks = block_bytes.reshape(n, half // 16, 16)  # (N, K/32, 16)
    return torch.cat([blocks & 0x0F, blocks >> 4], dim=-1).reshape(n, 2 * half)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The codes (N, K) `pack_int4` laid out."""
    halves = torch.stack([packed & 0x0F, packed >> 4], dim=3)  # (T, G, 4, 2, 16, 4) -> inputs 16 half + 4 j + b
    return halves.permute(0, 4, 1, 3, 2, 5).reshape(16 * len(packed), -1)


def pad_outputs(scales: torch.Tensor) -> torch.Tensor:
    """Per-output float32 scales (N,) padded with zeros to whole tiles of 16, as the int8 kernel reads them."""
    return torch.nn.functional.pad(scales.float(), (0, -len(scales) % 16)).contiguous()


def tile_levels(scales: torch.Tensor, lows: torch.Tensor) -> torch.Tensor:
    """Per-group scales and lows (N, K / G), N by 16 -> the int4 kernel's layout: (N/16, K/G, 2, 16) float16."""
    pairs = torch.stack([scales, lows], dim=1).to(torch.float16)  # (N, 2, K/G)
    return pairs.reshape(len(scales) // 16, 16, 2, -1).permute(0, 3, 2, 1).contiguous()


def tile_scales(scales: torch.Tensor) -> torch.Tensor:
    """Per-group scales (N, K / 32), N by 16 -> kind 5's layout (quantized.c): (N/16, K/32, 16) float16."""
    return scales.to(torch.float16).reshape(len(scales) // 16, 16, -1).permute(0, 2, 1).contiguous()


def untile_scales(tiled: torch.Tensor) -> torch.Tensor:
    """The scales (N, K / 32) `tile_scales` laid out, in float32."""
    return tiled.float().permute(0, 2, 1).reshape(16 * len(tiled), -1)


def untile_levels(tiled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales and lows (N, K / G) `tile_levels` laid out, in float32."""
    pairs = tiled.float().permute(0, 3, 2, 1).reshape(16 * len(tiled), 2, -1)  # (N, 2, K/G)
    return pairs[:, 0], pairs[:, 1]
