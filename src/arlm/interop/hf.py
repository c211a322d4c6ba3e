"""Hugging Face interop: export an arlm checkpoint as a GPT2 / Llama folder (config.json, model.safetensors,
generation_config.json, tokenizer.json) that transformers loads as is, and load such folders back.

Weights are read and written as safetensors only; pickle files (pytorch_model.bin) are refused, never opened.
Name maps: HF GPT2 keeps Conv1D weights as (in, out), so every matrix is transposed; Llama's separate
q/k/v and gate/up projections are the row blocks of our fused `attn.qkv` and `mlp.up`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from arlm.config import ModelConfig, RunConfig
from arlm.data.tokenizers import Tokenizer, VocabTokenizer, load_tokenizer
from arlm.errors import ArlmError, check_creatable, check_replaceable
from arlm.interop.checkpoint import LoadedModel, check_output_apart, load_checkpoint_model, save_tensors
from arlm.model.transformer import Transformer
from arlm.temporaries import holding, remove_stale, temporary_for

SUPPORTED = ("gpt2", "llama")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both the tanh form of GELU
GPT2_MODULES = (
    ("norm1", "ln_1"),
    ("attn.qkv", "attn.c_attn"),
    ("attn.proj", "attn.c_proj"),
    ("norm2", "ln_2"),
    ("mlp.up", "mlp.c_fc"),
    ("mlp.down", "mlp.c_proj"),
)  # (arlm, HF) names within one block; those not norm* are Linear (ours) / Conv1D (HF)
# Python's \w and \s as Oniguruma classes (Python's \s also holds \x1c-\x1f), so the word split is the same.
_W, _S = r"\p{L}\p{N}_", r"\s\x1c-\x1f"
WORD_PATTERN = rf"[{_W}]+|[^{_W}{_S}]|[{_S}]+"


# ---------------------------------------------------------------- export


def export_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    load: Callable[[str | Path], LoadedModel] = load_checkpoint_model,
) -> Path:
    """Write an arlm checkpoint (or a run's newest) as a Hugging Face folder; return the folder. `load` reads
    the model (interop.loading.load_model also merges a LoRA run into its base)."""
    out_dir = Path(out_dir)
    check_output_apart(out_dir, checkpoint)  # not the model, its run, a LoRA run's base, inside or around them
    _check_target(out_dir, overwrite)
    loaded = load(checkpoint)
    return save_hf_folder(loaded.model, loaded.tokenizer, out_dir, overwrite=overwrite)


def save_hf_folder(model: Transformer, tokenizer: Tokenizer, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a model and its tokenizer as a Hugging Face folder (a temporary folder, renamed at the end)."""
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    config = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    weights = _gpt2_to_hf(state, config) if config.flavour == "gpt2" else _llama_to_hf(state, config)
    weights = {k: v.contiguous() for k, v in weights.items()}
    specials = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)  # what an export that was killed left
    tmp = temporary_for(out_dir, hidden=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with holding(tmp):
            save_tensors(weights, tmp / "model.safetensors", metadata={"format": "pt"})
            _write_json(tmp / "config.json", {**hf_config(config), **specials})
            _write_json(tmp / "generation_config.json", {"_from_model_config": True, **specials})
            save_hf_tokenizer(tokenizer, tmp, model_max_length=config.block_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, trash)
    os.replace(tmp, out_dir)
    shutil.rmtree(trash, ignore_errors=True)
    return out_dir


EXPORT_FILES = {  # what save_hf_folder writes: all --overwrite may replace
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ArlmError(f"{out_dir} exists and is not a folder; choose a folder to export to")
    check_creatable(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise ArlmError(f"{out_dir} holds no Hugging Face model (--overwrite replaces only one); choose another folder")
    foreign = [p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES] if out_dir.is_dir() else []
    check_replaceable(out_dir, foreign, "an export's")  # (before --overwrite is suggested: it would be refused)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ArlmError(f"{out_dir} holds an export; pass --overwrite to replace it, or choose an empty folder")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """The transformers config.json fields (GPT2Config or LlamaConfig) for an arlm model shape."""
    common = {
        "architectures": [ARCHITECTURES[config.flavour]],
        "model_type": config.flavour,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "use_cache": True,
        "torch_dtype": "float32",  # transformers 4.x spelling
        "dtype": "float32",  # transformers 5.x spelling
    }
    if config.flavour == "gpt2":
        return {
            **common,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,  # grouped k/v heads are repeated on export: GPT2 has no GQA
            "n_positions": config.block_size,
            "n_ctx": config.block_size,
            "n_inner": config.ffn_dim,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), config.dropout),
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    return {
        **common,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers 5.x
        "rope_scaling": None,
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,
        "pretraining_tp": 1,
    }


def _bias(state: dict[str, torch.Tensor], key: str, width: int) -> torch.Tensor:
    """A bias from the state dict, or zeros where the arlm model has none."""
    return state[key] if key in state else torch.zeros(width)


def _repeat_kv(qkv: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """Fused q/k/v rows (weight or bias) with each k/v head repeated for the n_head / n_kv_head queries it serves."""
    q, k, v = qkv.split([c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim])
    repeat = c.n_head // c.kv_heads
    k, v = (t.unflatten(0, (c.kv_heads, -1)).repeat_interleave(repeat, dim=0).flatten(0, 1) for t in (k, v))
    return torch.cat([q, k, v])


def _gpt2_to_hf(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": state["tok_emb.weight"], "transformer.wpe.weight": state["pos_emb.weight"]}
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in GPT2_MODULES:
            weight = state[f"{b}{ours}.weight"]
            bias = _bias(state, f"{b}{ours}.bias", weight.shape[0])
            if ours == "attn.qkv" and c.kv_heads != c.n_head:  # GPT2 has no GQA: repeat the shared k/v heads
                weight, bias = _repeat_kv(weight, c), _repeat_kv(bias, c)
            out[f"{h}{theirs}.weight"] = weight if ours.startswith("norm") else weight.t()  # Conv1D: (in, out)
            out[f"{h}{theirs}.bias"] = bias
    out["transformer.ln_f.weight"] = state["norm.weight"]
    out["transformer.ln_f.bias"] = _bias(state, "norm.bias", c.d_model)
    if not c.tie_embeddings:  # tied: HF stores the shared matrix once, as wte
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def _llama_to_hf(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    sizes = [c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim]
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["norm.weight"]}
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = state[b + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = state[b + "norm2.weight"]
        for kind in ("weight", "bias") if c.bias else ("weight",):
            q, k, v = state[f"{b}attn.qkv.{kind}"].split(sizes)
            gate, up = state[f"{b}mlp.up.{kind}"].chunk(2)
            out.update(
                {
                    f"{h}self_attn.q_proj.{kind}": q,
                    f"{h}self_attn.k_proj.{kind}": k,
                    f"{h}self_attn.v_proj.{kind}": v,
                    f"{h}self_attn.o_proj.{kind}": state[f"{b}attn.proj.{kind}"],
                    f"{h}mlp.gate_proj.{kind}": gate,
                    f"{h}mlp.up_proj.{kind}": up,
                    f"{h}mlp.down_proj.{kind}": state[f"{b}mlp.down.{kind}"],
                }
            )
    if not c.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


# ---------------------------------------------------------------- tokenizer


def hf_backend(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` giving the same ids and text as an arlm tokenizer (char/word converted)."""
    if isinstance(tokenizer, VocabTokenizer):
        return _vocab_backend(tokenizer)
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        raise ArlmError(f"cannot export a {tokenizer.kind!r} tokenizer to tokenizer.json")
    return backend


def _vocab_backend(tokenizer: VocabTokenizer) -> tokenizers.Tokenizer:
    """WordLevel over our vocabulary; split into characters or our word pattern; decode by plain joining."""
    vocab = {symbol: i for i, symbol in enumerate(tokenizer.vocab)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=tokenizer.vocab[tokenizer.unk_id]))
    pattern = r"[\s\S]" if tokenizer.kind == "char" else WORD_PATTERN
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    specials = sorted(tokenizer.special_ids())
    backend.add_special_tokens([AddedToken(tokenizer.vocab[i], special=True, normalized=False) for i in specials])
    return backend


def save_hf_tokenizer(tokenizer: Tokenizer, directory: str | Path, *, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for AutoTokenizer."""
    directory = Path(directory)
    backend = hf_backend(tokenizer)
    backend.save(str(directory / "tokenizer.json"))
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id, "unk": tokenizer.unk_id}
    specials = {f"{name}_token": backend.id_to_token(i) for name, i in ids.items() if i is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", specials)


# ---------------------------------------------------------------- import


def load_hf_folder(path: str | Path) -> LoadedModel:
    """Load a Hugging Face GPT2 or Llama folder (config.json, safetensors, tokenizer.json) as an arlm model."""
    path = Path(path)
    hf = _read_config(path)
    state = read_safetensors(path)
    if hf["model_type"] == "gpt2":
        config, weights = _gpt2_from_hf(hf, state, path)
    else:
        config, weights = _llama_from_hf(hf, state, path)
    model = Transformer.from_weights(config, weights)
    if not (path / "tokenizer.json").exists():
        raise ArlmError(
            f"{path} has no tokenizer.json; write one with transformers: "
            "AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
        )
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ArlmError(f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}")
    return LoadedModel(model.eval(), tokenizer, RunConfig(model=config), source=str(path))


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.exists():
        raise ArlmError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        hf = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArlmError(f"{file} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ArlmError(f"{path}: model_type {model_type!r} is not supported; arlm loads {', '.join(SUPPORTED)}")
    return hf


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors or of the shards named in model.safetensors.index.json."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f"only pickle weights ({', '.join(pickles)}), which arlm never opens" if pickles else "no weights"
        raise ArlmError(
            f"{path} holds {found}; it needs model.safetensors (convert with transformers: "
            "from_pretrained(folder).save_pretrained(folder, safe_serialization=True))"
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).exists():
            raise ArlmError(f"{path}: shard {name} named in model.safetensors.index.json is missing")
        try:
            state.update(load_file(path / name))
        except SafetensorError as exc:  # a truncated or damaged file
            raise ArlmError(f"{path / name} cannot be read as safetensors ({exc}); it may be truncated") from None
    return state


def _taker(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> Callable[[str], torch.Tensor]:
    """A function name -> float32 tensor that raises ArlmError naming a missing weight."""

    def take(name: str) -> torch.Tensor:
        for key in (prefix + name, name):
            if key in state:
                return state[key].float()
        raise ArlmError(f"{path}: weight {prefix + name} is missing from the safetensors files")

    return take


def _gpt2_from_hf(
    hf: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise ArlmError(f"{path}: GPT2 activation {activation!r} is not supported (only {', '.join(GPT2_ACTIVATIONS)})")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ArlmError(f"{path}: GPT2 attention scaling other than 1/sqrt(head_dim) is not supported")
    take = _taker(state, path, "transformer.")
    C, n_layer = hf.get("n_embd", 768), hf.get("n_layer", 12)
    weights = {"tok_emb.weight": take("wte.weight"), "pos_emb.weight": take("wpe.weight")}
    biases = {"norm.bias": take("ln_f.bias")}
    for i in range(n_layer):
        b, h = f"blocks.{i}.", f"h.{i}."
        for ours, theirs in GPT2_MODULES:
            weight = take(f"{h}{theirs}.weight")
            weights[f"{b}{ours}.weight"] = weight if ours.startswith("norm") else weight.t()
            biases[f"{b}{ours}.bias"] = take(f"{h}{theirs}.bias")
    weights["norm.weight"] = take("ln_f.weight")
    bias = any(bool(t.any()) for t in biases.values())  # all zero: an arlm model without biases is the same
    if bias:
        weights.update(biases)
    tied = hf.get("tie_word_embeddings", True)
    if not tied:
        weights["lm_head.weight"] = _taker(state, path)("lm_head.weight")  # outside `transformer.`
    config = ModelConfig(
        flavour="gpt2",
        vocab_size=weights["tok_emb.weight"].shape[0],
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=n_layer,
        n_head=hf.get("n_head", 12),
        d_model=C,
        d_ff=hf.get("n_inner") or 4 * C,
        bias=bias,
        tie_embeddings=tied,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        init_std=hf.get("initializer_range", 0.02),
    )
    return config, weights


def _rope_theta(hf: dict[str, Any], path: Path) -> float:
    """RoPE base from rope_parameters (transformers 5) or rope_theta (4.x); scaled RoPE is refused."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ArlmError(f"{path}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_from_hf(
    hf: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    if hf.get("hidden_act", "silu") != "silu":
        raise ArlmError(f"{path}: Llama activation {hf['hidden_act']!r} is not supported (only silu)")
    C, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, C // n_head):
        raise ArlmError(f"{path}: head_dim {hf['head_dim']} differs from hidden_size / num_attention_heads")
    bias = bool(hf.get("attention_bias") or hf.get("mlp_bias"))
    take = _taker(state, path)
    weights = {"tok_emb.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}

    def part(name: str, kind: str) -> torch.Tensor:
        if kind == "bias" and name + ".bias" not in state:  # a folder with only attention or only MLP biases
            return torch.zeros(take(name + ".weight").shape[0])
        return take(f"{name}.{kind}")

    for i in range(hf["num_hidden_layers"]):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        weights[b + "norm1.weight"] = take(h + "input_layernorm.weight")
        weights[b + "norm2.weight"] = take(h + "post_attention_layernorm.weight")
        for kind in ("weight", "bias") if bias else ("weight",):
            q, k, v, o = (part(f"{h}self_attn.{p}_proj", kind) for p in "qkvo")
            gate, up, down = (part(f"{h}mlp.{p}_proj", kind) for p in ("gate", "up", "down"))
            weights[f"{b}attn.qkv.{kind}"] = torch.cat([q, k, v])
            weights[f"{b}attn.proj.{kind}"] = o
            weights[f"{b}mlp.up.{kind}"] = torch.cat([gate, up])
            weights[f"{b}mlp.down.{kind}"] = down
    tied = hf.get("tie_word_embeddings", False)
    if not tied:
        weights["lm_head.weight"] = take("lm_head.weight")
    kv = hf.get("num_key_value_heads") or n_head
    config = ModelConfig(
        flavour="llama",
        vocab_size=weights["tok_emb.weight"].shape[0],
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=None if kv == n_head else kv,
        d_model=C,
        d_ff=hf["intermediate_size"],
        bias=bias,
        tie_embeddings=tied,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf, path),
        init_std=hf.get("initializer_range", 0.02),
    )
    return config, weights
