"""GGUF blocks kept as they are: at --dtype int4, Q4_0, Q4_1 and Q4_K tensors become `Int4Linear` layers (group 32);
Q8_0 tensors (at int8, and int4's head) `Int8Linear` layers in groups of 32 on arlm's CPU kernels, and at int8 so do
Q5_0 and Q4_0 ones (a byte code and a scale per value: most of a Q4_K_M file made from a model whose widths are no
multiple of 256, as SmolLM2's); straight from the file's codes and block scales, with no dequantize-requantize round
trip. --dtype mixed (what auto picks for a file that mixes types, as every Q4_K_M file does) holds each layer so by
its own type, and the quantized layers of other types (Q6_K, Q5_K, Q5_1) as int8 in groups of 32 from their values.
The embedding reads its rows from int codes where it can (`QuantEmbedding`, never a float32 copy): a tied table
from its head's when the head is int8 in groups of 32, an untied Q4 / byte-type table from its own blocks.

A Q4_1 block of 32 weights holds d and m (float16) and 32 codes q in 0..15 (low nibbles first, then high
nibbles): w = d * q + m, `Int4Linear`'s convention with scale d and low m. Q4_0 holds d alone: w = d * (q - 8), scale d
and low -8d. A Q4_K sub-block of 32: w = (d sc) q - dmin m, scale d sc and low -dmin m, each rounded to float16 as the
int4 kernels read their levels (d and dmin are float16, sc and m 6 bits: the product needs up to 17 bits, so a level
moves by at most 2^-11 of itself; `gguf.q4_k_bytes`). A Q8_0 block holds d (float16) and 32 signed bytes q: w = d * q;
Q5_0, d and 5-bit codes: w = d * (q - 16), the byte code q - 16 with scale d (`gguf.byte_blocks`). The output head
counts as a layer: its source is `output.weight`, or `token_embd.weight` where the model ties them (SmolLM2's Q8_0).
Tensors of other types (Q8_0 layers at int4, K-quants at int8, or where arlm's kernels are not built) are dequantized
by the file reader and `--dtype int8 / int4` then quantizes them to that dtype (interop/loading.py): with PyTorch's
kernels, also their bfloat16 rounding of scales and inputs (model/quant.py)."""

from __future__ import annotations

from torch import nn

from arlm.config import ModelConfig
from arlm.interop.gguf import (
    FLOAT_TYPES,
    Q4_TYPES,
    GGUFContents,
    byte_blocks,
    linear_sources,
    q4_bytes,
    q4_k_levels_fit,
    read_gguf,
    stack_rows,
)
from arlm.model import native
from arlm.model.quant import Int4Linear, Int8Linear, QuantEmbedding, int4_fits, q8_0_fits
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
    """arlm's Linear weights whose sources are all Q4_0 / Q4_1 / Q4_K and whose shape int4 holds: the layers int4
    builds from the blocks (so their float32 values need not be decoded at all: load_gguf_model's `unread`). The
    head never: its source is also the embedding's."""
    return [
        ours for ours, parts in _sources(config).items() if ours != "lm_head.weight" and _held(contents, parts, "int4")
    ]


def _held(contents: GGUFContents, parts: list[tuple[str, tuple[int, int], int]], kind: str) -> bool:
    """Whether the weight stacked from `parts` can be held as `kind` straight from the file's blocks: "int4" (every
    part Q4_0 / Q4_1 / Q4_K, a shape int4 holds, float16 levels) or "int8" (every part a byte type, Q8_0's shape)."""
    types, fits = (Q4_TYPES, int4_fits) if kind == "int4" else (BYTE_TYPES, q8_0_fits)
    if not all(_type(contents, name) in types for name, _, _ in parts) or not fits(*_shape(parts)):
        return False
    return kind == "int8" or _levels_fit(contents, parts)


def block_built(contents: GGUFContents, config: ModelConfig, quant: str | None) -> list[str]:
    """The weights layers_from_gguf builds from the file's blocks at `quant` on the CPU, whose float32 values
    load_gguf_model need not decode (its `unread`): the Linears but the head, and the embedding's table where a tied
    head is built from its blocks, or an untied one is read from its own (then read by a QuantEmbedding)."""
    kinds = _built(contents, config, quant)
    tied = config.tie_embeddings and kinds.get("lm_head.weight") == "int8"
    table = ["tok_emb.weight"] if tied or _table_kind(contents, config, quant) else []
    return [ours for ours, kind in kinds.items() if kind in ("int4", "int8") and ours != "lm_head.weight"] + table


def _table_kind(contents: GGUFContents, config: ModelConfig, quant: str | None) -> str | None:
    """How an untied table is read from its own blocks at an int `quant` on arlm's kernels: "int4" (Q4_0 / Q4_1 /
    Q4_K), "int8" (a byte type), or None (decoded to float32: another type, a tied table, a shape that does not fit)."""
    if config.tie_embeddings or quant not in ("int4", "int8", "mixed") or not native.available():
        return None
    parts = [("token_embd.weight", (config.vocab_size, config.d_model), 0)]
    return next((kind for kind in ("int4", "int8") if _held(contents, parts, kind)), None)


def _built(contents: GGUFContents, config: ModelConfig, quant: str | None) -> dict[str, str]:
    """The Linears layers_from_gguf replaces at `quant` and how: "int4" or "int8" from their blocks, "values" (int8
    in groups of 32 from the decoded values: mixed only)."""
    kinds = layer_kinds(contents, config)
    if quant == "int4":  # the Q4 layers, and a head of a byte type
        return {
            ours: kind
            for ours, kind in kinds.items()
            if kind == "int4" or (ours == "lm_head.weight" and kind == "int8")
        }
    if quant == "int8":  # Q4_0 layers too: a byte code each
        return {ours: "int8" for ours in _byte_layers(contents, config)}
    return {ours: kind for ours, kind in kinds.items() if kind != "float"} if quant == "mixed" else {}


def _levels_fit(contents: GGUFContents, parts: list[tuple[str, tuple[int, int], int]]) -> bool:
    """Whether a Q4 layer's levels are float16 numbers, as the int4 kernels read them (Q4_0 / Q4_1's are; Q4_K's
    d sc and dmin m are within 63 times its float16 d and dmin)."""
    q4_k = [name for name, _, _ in parts if _type(contents, name) == "Q4_K"]
    return all(q4_k_levels_fit(contents.tensors[name].data) for name in q4_k)


def layer_kinds(contents: GGUFContents, config: ModelConfig) -> dict[str, str]:
    """arlm's Linear weights (the head included) -> how --dtype mixed holds them: "int4" (q4_layers), "int8" (every
    source a byte type: Int8Linear from the blocks), "values" (quantized otherwise, e.g. Q6_K or a Q4_1 head: int8 in
    groups of 32 from the values the file holds), or "float" (a source F32 / F16 / BF16: kept as decoded)."""
    sources = _sources(config)
    q4, byte = set(q4_layers(contents, config)), set(_byte_layers(contents, config))
    floats = {ours for ours, parts in sources.items() if any(_type(contents, n) in FLOAT_TYPES for n, _, _ in parts)}
    return {
        ours: "int4" if ours in q4 else "int8" if ours in byte else "float" if ours in floats else "values"
        for ours in sources
    }


def _byte_layers(contents: GGUFContents, config: ModelConfig) -> list[str]:
    """arlm's Linear weights (the head included) whose sources are all byte types and whose shape Q8_0's int8
    layout holds: the layers int8 builds from the blocks."""
    return [ours for ours, parts in _sources(config).items() if _held(contents, parts, "int8")]


def _type(contents: GGUFContents, name: str) -> str:
    """The GGML type name of a tensor in the file ("F32" where it is missing: a shape the loader refuses anyway)."""
    return contents.tensors[name].tensor_type.name if name in contents.tensors else "F32"


def file_dtype(contents: GGUFContents, config: ModelConfig, cpu: bool) -> str:
    """--dtype auto for a GGUF file: on a CPU where arlm's kernels run, int4 when every layer is Q4_0 / Q4_1 / Q4_K
    and the head a byte type (SmolLM2's Q4_1 file), int8 when every layer and the head are Q8_0 / Q5_0 / Q4_0, mixed
    when any layer is quantized otherwise (a Q4_K_M file: each layer as the file holds it, layer_kinds). bfloat16
    when every weight matrix is BF16; float32 otherwise (F16, F32 files; a GPU)."""
    kinds = layer_kinds(contents, config)
    if cpu and native.available():
        layers = {kind for ours, kind in kinds.items() if ours != "lm_head.weight"}
        if layers == {"int4"} and kinds["lm_head.weight"] == "int8":
            return "int4"
        if set(kinds.values()) == {"int8"}:
            return "int8"
        if set(kinds.values()) - {"float"}:
            return "mixed"
    return "bfloat16" if set(block_layers(contents, config, ("BF16",))) == set(kinds) else "float32"


def layers_from_gguf(model: Transformer, ref: str, quant: str) -> list[str]:
    """Replace Linears of a model loaded from GGUF `ref` by layers built from the file's blocks (in place), where
    arlm's kernels run: for quant "int4", q4_layers by Int4Linears and the head, if a byte type, by an Int8Linear in
    groups of 32 (int4's head is int8); for "int8", every Linear whose sources are all Q8_0, Q5_0 or Q4_0 so; for
    "mixed", every quantized Linear by its layer_kinds. Returns the names of the layers replaced."""
    contents, sources = read_gguf(ref), _sources(model.config)
    kinds = _built(contents, model.config, quant)
    replaced = []
    for ours, kind in kinds.items():
        path = ours.removesuffix(".weight")
        parent, _, name = path.rpartition(".")
        if kind == "values":  # in groups of 32 where Q8_0's layout holds the shape, else per output channel
            group = native.Q8_GROUP if q8_0_fits(*_shape(sources[ours])) else 0
            layer = Int8Linear.from_float(model.get_submodule(path), group_size=group)
        else:
            layer = _from_blocks(contents, sources[ours], kind)
        setattr(model.get_submodule(parent), name, layer)
        replaced.append(path)
    head, config = model.lm_head, model.config
    if config.tie_embeddings and isinstance(head, Int8Linear) and head.group_size:  # the table: the head's codes
        model.tok_emb = QuantEmbedding(head)  # a Q8_0 table's very values; a Q6_K one's as the head holds them
    elif table_kind := _table_kind(contents, config, quant):  # an untied table: its own blocks
        table = [("token_embd.weight", (config.vocab_size, config.d_model), 0)]
        model.tok_emb = QuantEmbedding(_from_blocks(contents, table, table_kind), owned=True)
    return replaced


def _from_blocks(contents: GGUFContents, parts: list[tuple[str, tuple[int, int], int]], kind: str) -> nn.Module:
    """An Int4Linear (kind "int4") or an Int8Linear in groups of 32 ("int8") from the blocks of a Linear's sources."""
    tensors = [contents.tensors[name] for name, _, _ in parts]
    read = q4_bytes if kind == "int4" else byte_blocks
    blocks = [read(t.data, t.tensor_type.name, shape) for t, (_, shape, _) in zip(tensors, parts)]  # per tensor
    heads = [h for *_, h in parts]
    arrays = [stack_rows([b[i] for b in blocks], heads) for i in range(len(blocks[0]))]
    return Int4Linear.from_q4_bytes(*arrays) if kind == "int4" else Int8Linear.from_blocks(*arrays)
