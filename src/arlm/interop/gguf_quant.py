"""GGUF blocks kept as they are: at --dtype int4, Q4_0 and Q4_1 tensors become `Int4Linear` layers (group 32); Q8_0
tensors (at int8, and int4's head) `Int8Linear` layers in groups of 32 on arlm's CPU kernels, and at int8 so do Q5_0
and Q4_0 ones (a byte code and a scale per value: most of a Q4_K_M file made from a model whose widths are no
multiple of 256, as SmolLM2's); straight from the file's codes and block scales, with no dequantize-requantize round
trip.

A Q4_1 block of 32 weights holds d and m (float16) and 32 codes q in 0..15 (low nibbles first, then high
nibbles): w = d * q + m, `Int4Linear`'s convention with scale d and low m. Q4_0 holds d alone: w = d * (q - 8), scale d
and low -8d. A Q8_0 block holds d (float16) and 32 signed bytes q: w = d * q; Q5_0, d and 5-bit codes: w = d * (q - 16),
the byte code q - 16 with scale d (`gguf.byte_blocks`). The output head counts as a layer: its
source is `output.weight`, or `token_embd.weight` where the model ties them (SmolLM2's Q8_0). Tensors of other types
(K-quants; Q8_0 layers at int4, or where arlm's kernels are not built) are dequantized by the file reader and
`--dtype int8 / int4` then quantizes them to that dtype (interop/loading.py): with PyTorch's kernels, also their
bfloat16 rounding of scales and inputs (model/quant.py)."""

from __future__ import annotations

from arlm.config import ModelConfig
from arlm.interop.gguf import (
    Q4_TYPES,
    GGUFContents,
    byte_blocks,
    linear_sources,
    q4_bytes,
    read_gguf,
    stack_rows,
)
from arlm.model import native
from arlm.model.quant import Int4Linear, Int8Linear, int4_fits, q8_0_fits
from arlm.model.transformer import Transformer

BYTE_TYPES = ("Q8_0", "Q5_0", "Q4_0")  # w = d c, c a byte: Int8Linear in groups of 32 (int8, and int4's head)


def _sources(config: ModelConfig) -> dict[str, list[tuple[str, tuple[int, int], int]]]:
    """linear_sources with the output head: arlm's Linear weights -> their GGUF tensors."""
    head = "token_embd.weight" if config.tie_embeddings else "output.weight"
    return {**linear_sources(config), "lm_head.weight": [(head, (config.vocab_size, config.d_model), 0)]}


def _shape(parts: list[tuple[str, tuple[int, int], int]]) -> tuple[int, int]:
    """The (out, in) shape of arlm's Linear weight stacked from these source tensors."""
    return sum(shape[0] for _, shape, _ in parts), parts[0][1][1]


def block_layers(contents: GGUFContents, config: ModelConfig, types: tuple[str, ...]) -> list[str]:
    """arlm's Linear weights (the head included) whose source tensors in the file are all of `types`."""
    return [
        ours
        for ours, parts in _sources(config).items()
        if all(name in contents.tensors and contents.tensors[name].tensor_type.name in types for name, _, _ in parts)
    ]


def q4_layers(contents: GGUFContents, config: ModelConfig) -> list[str]:
    """arlm's Linear weights whose sources are all Q4_0 / Q4_1: the layers int4 builds from the blocks (so their
    float32 values need not be decoded at all: load_gguf_model's `unread`). The head never: its source is also the
    embedding's."""
    return [ours for ours in block_layers(contents, config, Q4_TYPES) if ours != "lm_head.weight"]


def file_dtype(contents: GGUFContents, config: ModelConfig, cpu: bool) -> str:
    """--dtype auto for a GGUF file: on a CPU where arlm's kernels run, int4 when every layer is Q4_0 / Q4_1 and the
    head a byte type (SmolLM2's Q4_1 file), int8 when every layer and the head are Q8_0 / Q5_0 / Q4_0: the dtypes
    that hold each of them as the file's own blocks. bfloat16 when every weight matrix is BF16; float32 otherwise
    (K-quants, F16, F32, mixtures): those hold the file's values, decoded."""
    sources = _sources(config)
    layers = set(sources)
    shapes = {ours: _shape(parts) for ours, parts in sources.items()}
    byte = {ours for ours in block_layers(contents, config, BYTE_TYPES) if q8_0_fits(*shapes[ours])}
    q4 = {ours for ours in q4_layers(contents, config) if int4_fits(*shapes[ours])}
    if cpu and native.available():
        if q4 | (byte & {"lm_head.weight"}) == layers:
            return "int4"
        if byte == layers:
            return "int8"
    return "bfloat16" if set(block_layers(contents, config, ("BF16",))) == layers else "float32"


def layers_from_gguf(model: Transformer, ref: str, quant: str) -> list[str]:
    """Replace Linears of a model loaded from GGUF `ref` by layers built from the file's blocks (in place): for
    quant "int4", those whose sources are all Q4_0 / Q4_1 by Int4Linears and the head, if Q8_0, by an Int8Linear in
    groups of 32 (int4's head is int8); for "int8", every Linear whose sources are all Q8_0, Q5_0 or Q4_0 so. Those
    layers only where arlm's kernels run and the outputs come by 16. Returns the names of the layers replaced."""
    contents, sources = read_gguf(ref), _sources(model.config)
    q8 = block_layers(contents, model.config, BYTE_TYPES)
    if quant == "int4":
        q8 = [ours for ours in q8 if ours == "lm_head.weight"]
    replaced = []
    for ours in (q4_layers(contents, model.config) if quant == "int4" else []) + q8:
        parts = sources[ours]
        if ours in q8 and not q8_0_fits(*_shape(parts)):
            continue  # left to be decoded and quantized as a float weight
        tensors = [contents.tensors[name] for name, _, _ in parts]
        blocks = [  # (codes, scales) or (code bytes, scales, lows) per tensor
            (byte_blocks if ours in q8 else q4_bytes)(t.data, t.tensor_type.name, shape)
            for t, (_, shape, _) in zip(tensors, parts)
        ]
        heads = [h for *_, h in parts]
        arrays = [stack_rows([b[i] for b in blocks], heads) for i in range(len(blocks[0]))]
        layer = Int8Linear.from_blocks(*arrays) if ours in q8 else Int4Linear.from_q4_bytes(*arrays)
        path = ours.removesuffix(".weight")
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, layer)
        replaced.append(path)
    return replaced
