"""GGUF 4-bit blocks kept as they are: Q4_0 and Q4_1 tensors become `Int4Linear` layers (group 32) straight from
the file's codes and block scales, with no dequantize-requantize round trip.

A Q4_1 block of 32 weights holds d and m (float16) and 32 codes q in 0..15 (low nibbles first, then high
nibbles): w = d * q + m, `Int4Linear`'s convention with scale d and low m. Q4_0 holds d alone: w = d * (q - 8), scale d
and low -8d. Tensors of other types (SmolLM2's tied Q8_0 head, K-quants) are dequantized by the file reader;
`--dtype int4` then quantizes them to int8 per output channel (interop/loading.py), the one place where the model read
differs from the file (with PyTorch's kernels, also their bfloat16 rounding of scales and inputs: model/quant.py)."""

from __future__ import annotations

from arlm.config import ModelConfig
from arlm.interop.gguf import BLOCK, Q4_TYPES, GGUFContents, linear_sources, q4_blocks, read_gguf, stack_rows
from arlm.model.quant import Int4Linear
from arlm.model.transformer import Transformer


def q4_layers(contents: GGUFContents, config: ModelConfig) -> list[str]:
    """arlm's Linear weights whose source tensors in the file are all Q4_0 / Q4_1: the layers int4 builds from the
    blocks (so their float32 values need not be decoded at all: load_gguf_model's `unread`)."""
    return [
        ours
        for ours, parts in linear_sources(config).items()
        if all(name in contents.tensors and contents.tensors[name].tensor_type.name in Q4_TYPES for name, _, _ in parts)
    ]


def int4_from_gguf(model: Transformer, ref: str) -> list[str]:
    """Replace every Linear of a model loaded from GGUF `ref` whose source tensors are all Q4_0 / Q4_1 by an
    Int4Linear built from the blocks (in place); returns the names of the layers replaced."""
    contents = read_gguf(ref)
    sources = linear_sources(model.config)
    replaced = []
    for ours in q4_layers(contents, model.config):
        parts = sources[ours]
        tensors = [contents.tensors[name] for name, _, _ in parts]
        blocks = [q4_blocks(t.data, t.tensor_type.name, shape) for t, (_, shape, _) in zip(tensors, parts)]
        heads = [h for *_, h in parts]
        codes, scales, lows = (stack_rows([b[i] for b in blocks], heads) for i in range(3))
        path = ours.removesuffix(".weight")
        parent, name = path.rsplit(".", 1)
        setattr(model.get_submodule(parent), name, Int4Linear.from_codes(codes, scales, lows, BLOCK))
        replaced.append(path)
    return replaced
