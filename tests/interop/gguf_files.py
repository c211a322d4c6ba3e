"""GGUF files written as llama.cpp's converter writes them, for the tests: a tiny Llama (any tensor's type chosen)
and its byte-level vocabulary."""

from __future__ import annotations

import numpy as np
import torch

from arlm.config import ModelConfig
from arlm.model.transformer import Transformer
from tests.helpers import optional_module

gguf = optional_module("gguf")


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-symbol table: printable bytes stand for themselves, the rest move to 256 and up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def permute_for_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """convert_hf_to_gguf's LlamaModel.permute: per head, rows (hd/2 firsts, hd/2 seconds) interleaved."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def random_blocks(
    name: str, n: int, rng: np.random.Generator, scales: tuple[float, float] = (0.001, 0.1)
) -> np.ndarray:
    """n random blocks of a quantized type (n, bytes a block), with finite float16 scales drawn from `scales`."""
    _, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    scale_at = {"Q6_K": [208]}.get(name, [0, 2] if name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else [0])
    for at in scale_at:
        raw[:, at : at + 2] = rng.uniform(*scales, (n, 1)).astype(np.float16).view(np.uint8)
    return raw


def write_tiny_llama(
    path,
    model: Transformer,
    tokens: list[str],
    merges: list[str],
    arch: str = "llama",
    types: dict | None = None,
    raw: dict | None = None,
):
    """The model as convert_hf_to_gguf writes it, float32, or a tensor's type from `types` (name -> GGML type), or
    random blocks of a type in place of a tensor's values (`raw`: name -> type name; for the K-quants, which gguf
    cannot quantize)."""
    c = model.config
    state = {k: v.detach() for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (
        ("block_count", c.n_layer),
        ("context_length", c.block_size),
        ("embedding_length", c.d_model),
        ("feed_forward_length", c.ffn_dim),
        ("attention.head_count", c.n_head),
        ("attention.head_count_kv", c.kv_heads),
        ("vocab_size", c.vocab_size),
    ):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", c.rope_theta)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tensors = {"token_embd.weight": state["tok_emb.weight"], "output_norm.weight": state["norm.weight"]}
    if not c.tie_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    nh, nkv, hd, F = c.n_head, c.kv_heads, c.head_dim, c.ffn_dim
    for i in range(c.n_layer):
        q, k, v = state[f"blocks.{i}.attn.qkv.weight"].split([nh * hd, nkv * hd, nkv * hd])
        up = state[f"blocks.{i}.mlp.up.weight"]
        for name, value in (
            ("attn_norm", state[f"blocks.{i}.norm1.weight"]),
            ("attn_q", permute_for_llama_cpp(q, nh)),
            ("attn_k", permute_for_llama_cpp(k, nkv)),
            ("attn_v", v),
            ("attn_output", state[f"blocks.{i}.attn.proj.weight"]),
            ("ffn_norm", state[f"blocks.{i}.norm2.weight"]),
            ("ffn_gate", up[:F]),
            ("ffn_up", up[F:]),
            ("ffn_down", state[f"blocks.{i}.mlp.down.weight"]),
        ):
            tensors[f"blk.{i}.{name}.weight"] = value
    rng = np.random.default_rng(11)
    for name, value in tensors.items():
        values = np.ascontiguousarray(value.numpy())
        if name in (raw or {}):
            kind = gguf.GGMLQuantizationType[raw[name]]
            block, _ = gguf.GGML_QUANT_SIZES[kind]
            blocks = random_blocks(raw[name], values.size // block, rng, scales=(2e-5, 2e-4))
            writer.add_tensor(name, blocks.reshape(len(values), -1), raw_dtype=kind)
            continue
        kind = (types or {}).get(name)
        writer.add_tensor(name, values if kind is None else gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


TINY_TOKENS = ["<|endoftext|>", "<|im_end|>", *byte_alphabet(), "Ġt", "he", "Ġthe"]
TINY_MERGES = ["Ġ t", "h e", "Ġt he"]
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def tied_llama(seed: int = 5, width: int = 64, ffn: int = 96, tie: bool = True) -> tuple[Transformer, list[str]]:
    """A random tied Llama whose 272 outputs come by 16 (so that a Q8_0 head can be kept as it is), and its tokens;
    width and ffn 256 fit the K-quants' super-blocks; tie=False: its head a matrix of its own."""
    torch.manual_seed(seed)
    tokens = TINY_TOKENS + [f"x{i}" for i in range(272 - len(TINY_TOKENS))]
    config = ModelConfig(
        flavour="llama", vocab_size=len(tokens), block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=width,
        d_ff=ffn, tie_embeddings=tie,
    )  # fmt: skip
    return Transformer(config).eval(), tokens


def layer_types(model: Transformer, head: str, layers: str) -> dict:
    """GGUF tensor name -> type: every Linear of the blocks `layers`, the (tied) embedding `head`."""
    kinds = gguf.GGMLQuantizationType
    blocks = {f"blk.{i}.{name}.weight": kinds[layers] for i in range(model.config.n_layer) for name in LINEARS}
    return blocks | {"token_embd.weight": kinds[head]}
