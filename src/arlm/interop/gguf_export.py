"""Export an arlm Llama-flavour model with its byte-level BPE tokenizer as a GGUF file (llama.cpp's format), so
llama.cpp and the tools built on it run models trained here. arlm's reader (gguf.py) reads the file back to the
same weights and the same token ids; the tokenizer is checked by rebuilding it through that reader.

Layout as convert_hf_to_gguf writes a Llama: `llama.*` hyperparameters, `tokenizer.ggml.*` (model "gpt2",
tokens, token types, merges, pre-tokenizer name, special ids), tensors token_embd / blk.N.* / output_norm /
output, with the attn_q / attn_k rows permuted per head into llama.cpp's interleaved RoPE order."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arlm.config import ModelConfig
from arlm.data.tokenizers import Tokenizer, VocabTokenizer
from arlm.errors import ArlmError, check_creatable
from arlm.interop.checkpoint import check_output_apart
from arlm.interop.gguf import GGUFContents, build_tokenizer
from arlm.interop.gguf_file import gguf_package
from arlm.interop.loading import load_model
from arlm.model.transformer import Transformer
from arlm.temporaries import holding, remove_stale, temporary_for

# --outtype: (GGML tensor type of the matrices, general.file_type); 1-D tensors (norms) stay F32 as llama.cpp wants
OUTTYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7)}
# One `tokenizer.ggml.pre` name per split arlm's reader builds, spelled as llama.cpp knows it (llama-vocab.cpp).
PRE_NAMES = ("gpt-2", "smollm", "llama-bpe", "qwen2")
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types
_SPECIAL_KEYS = {"bos": "bos", "eos": "eos", "pad": "padding", "unk": "unknown"}  # arlm name -> GGUF key part


@dataclass
class GGUFVocab:
    """A byte-level BPE tokenizer as GGUF holds it (`tokenizer.ggml.*`, plus `tokenizer.chat_template`)."""

    pre: str  # the pre-tokenizer name llama.cpp splits text by
    tokens: list[str]  # by id
    token_types: list[int]  # NORMAL, CONTROL (special added tokens), USER_DEFINED, UNUSED (padding rows)
    merges: list[str]  # "left right", by rank
    special_ids: dict[str, int]  # GGUF key part (bos, eos, padding, unknown) -> id
    chat_template: str | None = None

    def metadata(self) -> dict[str, Any]:
        """The GGUF metadata keys and values, as arlm's reader sees them."""
        meta = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": self.pre,
            "tokenizer.ggml.tokens": self.tokens,
            "tokenizer.ggml.token_type": self.token_types,
            "tokenizer.ggml.merges": self.merges,
            "tokenizer.ggml.add_bos_token": False,  # arlm encodes text without special tokens; so does llama.cpp
            "tokenizer.ggml.add_eos_token": False,
            **{f"tokenizer.ggml.{key}_token_id": i for key, i in self.special_ids.items()},
        }
        if self.chat_template:
            meta["tokenizer.chat_template"] = self.chat_template
        return meta


def export_gguf(reference: str | Path, out: str | Path, *, outtype: str = "f32", overwrite: bool = False) -> Path:
    """Write a model (an arlm run or checkpoint, an HF folder, a .gguf or 'smollm2') as one GGUF file."""
    out = Path(out)
    check_output_apart(out, reference)  # not inside the model's run or a LoRA run's base
    _check_target(out, outtype, overwrite)
    loaded = load_model(reference)
    if Path(loaded.source).resolve() == out.resolve():
        raise ArlmError(f"refusing to export {reference} onto itself; choose another output file")
    return save_gguf(loaded.model, loaded.tokenizer, out, outtype=outtype, name=Path(str(reference)).name)


def _check_target(out: Path, outtype: str, overwrite: bool) -> None:
    if outtype not in OUTTYPES:
        raise ArlmError(f"unknown GGUF type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if out.suffix != ".gguf":
        raise ArlmError(f"{out}: name the GGUF file with a .gguf suffix (arlm and llama.cpp tools go by it)")
    if out.is_dir():
        raise ArlmError(f"{out} is a folder; give a file name ending in .gguf")
    if out.exists() and not overwrite:
        raise ArlmError(f"{out} exists; choose another file or pass --overwrite to replace it")
    check_creatable(out)


def save_gguf(
    model: Transformer, tokenizer: Tokenizer, out: str | Path, *, outtype: str = "f32", name: str = "arlm"
) -> Path:
    """Write a model and its tokenizer as a GGUF file (a temporary file, renamed at the end)."""
    out = Path(out)
    config = model.config
    check_exportable(config)
    if outtype not in OUTTYPES:
        raise ArlmError(f"unknown GGUF type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    tensors = gguf_tensors(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # what an export that was killed left
    tmp = temporary_for(out, hidden=True)
    try:
        tmp.touch()
        with holding(tmp):
            _write(tmp, config, vocab, tensors, outtype, name)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):  # where nothing could be written, the write's error is the one to see
            tmp.unlink(missing_ok=True)
    return out


def check_exportable(config: ModelConfig) -> None:
    """Refuse shapes that the GGUF `llama` architecture (and arlm's reader) cannot hold."""
    if config.flavour != "llama":
        raise ArlmError(
            f"GGUF export writes the llama architecture; this is a {config.flavour} model (learned positions, "
            "LayerNorm, GELU): export it with `arlm export hf` instead"
        )
    if config.bias:
        raise ArlmError("GGUF export supports Llama models without biases (model.bias false); use `arlm export hf`")


# ---------------------------------------------------------------- tokenizer


def gguf_vocab(tokenizer: Tokenizer, n_vocab: int) -> GGUFVocab:
    """The tokenizer as GGUF vocabulary (byte-level BPE only), padded to the model's n_vocab embedding rows."""
    backend = getattr(tokenizer, "backend", None)
    if isinstance(tokenizer, VocabTokenizer) or backend is None:
        raise ArlmError(
            f"a {tokenizer.kind} tokenizer cannot be written to GGUF (llama.cpp reads byte-level BPE or "
            "SentencePiece vocabularies); train with --data.tokenizer bpe, or use `arlm export hf`"
        )
    spec = json.loads(backend.to_str())
    tokens = [backend.id_to_token(i) for i in range(tokenizer.vocab_size)]
    if spec.get("model", {}).get("type") != "BPE" or None in tokens:
        raise ArlmError(f"the {tokenizer.kind} tokenizer is not a BPE with a token for every id; GGUF needs one")
    added = backend.get_added_tokens_decoder()
    types = [(CONTROL if added[i].special else USER_DEFINED) if i in added else NORMAL for i in range(len(tokens))]
    ids = {key: getattr(tokenizer, f"{ours}_id") for ours, key in _SPECIAL_KEYS.items()}
    vocab = GGUFVocab(
        pre=_pre_name(spec),
        tokens=tokens,
        token_types=types,
        merges=[m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])],
        special_ids={key: i for key, i in ids.items() if i is not None},
        chat_template=tokenizer.chat_template,
    )
    _check_round_trip(tokenizer, vocab)
    if n_vocab < len(tokens):
        raise ArlmError(f"the model has {n_vocab} embedding rows but the tokenizer {len(tokens)} tokens")
    pads = [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]  # rows no token maps to, as convert_hf_to_gguf
    vocab.tokens, vocab.token_types = tokens + pads, types + [UNUSED] * len(pads)
    if len(set(vocab.tokens)) != n_vocab:
        raise ArlmError("the tokenizer has two ids with the same token text; GGUF keys tokens by their text")
    return vocab


def _pre_name(spec: dict[str, Any]) -> str:
    """The `tokenizer.ggml.pre` name whose split, as arlm's reader builds it, is this tokenizer's."""
    for name in PRE_NAMES:
        empty = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [], "tokenizer.ggml.merges": []}
        built = build_tokenizer(GGUFContents(Path(name), {**empty, "tokenizer.ggml.pre": name}, {}))
        if json.loads(built.backend.to_str())["pre_tokenizer"] == spec.get("pre_tokenizer"):
            return name
    raise ArlmError(
        "this tokenizer splits text in a way no GGUF pre-tokenizer arlm knows does "
        f"({', '.join(PRE_NAMES)}); GGUF export needs a byte-level BPE such as --data.tokenizer bpe"
    )


def _check_round_trip(tokenizer: Tokenizer, vocab: GGUFVocab) -> None:
    """Rebuild the tokenizer from the metadata through arlm's reader; refuse unless it is the same one."""
    rebuilt = build_tokenizer(GGUFContents(Path("export"), vocab.metadata(), {}))
    ours, theirs = json.loads(tokenizer.backend.to_str()), json.loads(rebuilt.backend.to_str())
    differ = [key for key in ours if ours[key] != theirs.get(key)]
    ids = ("bos_id", "eos_id", "pad_id", "unk_id")
    differ += [key for key in ids if getattr(tokenizer, key) != getattr(rebuilt, key)]
    if differ:
        raise ArlmError(
            f"the {tokenizer.kind} tokenizer cannot be written to GGUF exactly (its {', '.join(differ)} would "
            "change); GGUF export supports byte-level BPE (--data.tokenizer bpe) and tokenizers read from GGUF"
        )


# ---------------------------------------------------------------- weights


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """convert_hf_to_gguf's permute of q/k rows (the inverse of gguf.unpermute_rope_rows): per head, the
    rotate-half order (all firsts, then all seconds) becomes llama.cpp's interleaved pairs."""
    rows, cols = weight.shape  # (nh*hd, C)
    halves = weight.reshape(n_heads, 2, rows // n_heads // 2, cols)  # (nh, 2, hd/2, C)
    return halves.transpose(1, 2).reshape(rows, cols)  # (nh, hd/2, 2, C) -> (nh*hd, C)


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names (float32, torch layout), q/k split out and permuted."""
    c = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    nh, nkv, hd, F = c.n_head, c.kv_heads, c.head_dim, c.ffn_dim
    out = {"token_embd.weight": state.pop("tok_emb.weight")}
    for i in range(c.n_layer):
        blk, ours = f"blk.{i}", f"blocks.{i}"
        q, k, v = state.pop(f"{ours}.attn.qkv.weight").split([nh * hd, nkv * hd, nkv * hd])  # rows of (.., C)
        gate, up = state.pop(f"{ours}.mlp.up.weight").split([F, F])  # (F, C) each: silu(gate) * up
        out.update(
            {
                f"{blk}.attn_norm.weight": state.pop(f"{ours}.norm1.weight"),
                f"{blk}.attn_q.weight": permute_rope_rows(q, nh),
                f"{blk}.attn_k.weight": permute_rope_rows(k, nkv),
                f"{blk}.attn_v.weight": v,
                f"{blk}.attn_output.weight": state.pop(f"{ours}.attn.proj.weight"),
                f"{blk}.ffn_norm.weight": state.pop(f"{ours}.norm2.weight"),
                f"{blk}.ffn_gate.weight": gate,
                f"{blk}.ffn_up.weight": up,
                f"{blk}.ffn_down.weight": state.pop(f"{ours}.mlp.down.weight"),
            }
        )
    out["output_norm.weight"] = state.pop("norm.weight")
    head = state.pop("lm_head.weight")
    if not c.tie_embeddings:  # tied: llama.cpp falls back to token_embd when output.weight is absent
        out["output.weight"] = head
    if state:
        raise ArlmError(f"GGUF export has no place for the weights {', '.join(sorted(state)[:5])}")
    return out


def _write(
    path: Path, c: ModelConfig, vocab: GGUFVocab, tensors: dict[str, torch.Tensor], outtype: str, name: str
) -> None:
    """Write the GGUF file: header, metadata (llama.* and tokenizer.*), then the tensors."""
    gguf = gguf_package("GGUF export")

    type_name, file_type = OUTTYPES[outtype]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.ffn_dim)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.kv_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(file_type)
    if type_name == "Q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, vocab)
    qtype = gguf.GGMLQuantizationType[type_name]
    for tensor_name, tensor in tensors.items():
        array = tensor.numpy()
        kind = qtype if array.ndim == 2 else gguf.GGMLQuantizationType.F32
        writer.add_tensor(tensor_name, _quantize(gguf, array, kind, tensor_name), raw_dtype=kind)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """The tokenizer keys, each with the value type llama.cpp reads (the writer's own helpers)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id}
    adders.update({"padding": writer.add_pad_token_id, "unknown": writer.add_unk_token_id})
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _quantize(gguf: Any, array: np.ndarray, kind: Any, name: str) -> np.ndarray:
    """A float32 array in the GGML type `kind` (raw bytes for block types), refusing rows that do not fit."""
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    if array.shape[-1] % block:
        raise ArlmError(
            f"{kind.name} stores rows in blocks of {block} values; {name} has rows of {array.shape[-1]}: use f16"
        )
    return gguf.quants.quantize(np.ascontiguousarray(array), kind)
