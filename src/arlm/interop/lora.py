"""LoRA checkpoints: the base model (named by train.init and checked by hash) plus the adapters, merged on load;
and the adapters in Hugging Face PEFT's layout (adapter_config.json + adapter_model.safetensors), which `peft`
loads onto the transformers model of an exported base."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save

from arlm.config import RunConfig
from arlm.errors import ArlmError
from arlm.interop.checkpoint import Checkpoint, LoadedModel, is_run_dir, latest_checkpoint, list_checkpoints
from arlm.model.lora import add_lora, merge_lora, weights_sha256
from arlm.model.transformer import Transformer

PEFT_DIR = "peft"
HF_NAMES = {"attn.proj": "self_attn.o_proj", "mlp.down": "mlp.down_proj"}  # one Linear each in both models


def base_reference(init: str) -> str:
    """train.init as a LoRA checkpoint records it: a path made absolute, a name ('smollm2') as it is."""
    return str(Path(init).resolve()) if Path(init).exists() else init


def base_record(init: str, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """What a LoRA checkpoint records of its base: the reference, the SHA-256 of its weights and, for a run folder,
    the checkpoint it was read from (named where the run has since trained on and pruned it)."""
    record = {"reference": base_reference(init), "sha256": weights_sha256(state)}
    if is_run_dir(init) and (read := latest_checkpoint(init, log=lambda _: None)):
        record["checkpoint"] = str(read.resolve())  # (verified, as the load that read it: a damaged newer one passed)
    return record


def same_base(saved: dict | None, now: dict | None) -> bool:
    """Whether two records of a LoRA run's base name the same model: its reference and weights (the checkpoint it was
    read from is a note, which runs before 2026-12-07 do not hold)."""
    keys = ("reference", "sha256")
    return saved is not None and now is not None and all(saved.get(k) == now.get(k) for k in keys)


def base_weights(base: Transformer, config: RunConfig) -> dict[str, torch.Tensor]:
    """The base model's weights for a model of config.model's shape (learned positions cut to its context)."""
    state = base.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][: config.model.block_size]
    return state


def load_lora_checkpoint(checkpoint: Checkpoint, load_base: Callable[[str], LoadedModel]) -> LoadedModel:
    """The model of a LoRA checkpoint: its base (verified by hash) with the adapters folded into the weights."""
    record = checkpoint.meta["lora_base"]
    model = Transformer(checkpoint.config.model)
    for reference in _base_candidates(record["reference"]):
        try:
            model.load_state_dict(base_weights(load_base(reference).model, checkpoint.config))
        except ArlmError:  # an unfinished older checkpoint of the base run
            continue
        if weights_sha256(model.state_dict()) == record["sha256"]:
            break
    else:
        trained_on = f" ({record['checkpoint']}, which it was read from)" if "checkpoint" in record else ""
        raise ArlmError(
            f"{checkpoint.path} adapts a base model that {record['reference']} no longer holds (its weights "
            f"changed); restore that base model{trained_on}"
        )
    add_lora(model, checkpoint.config.train.lora)
    missing, unexpected = model.load_state_dict(checkpoint.model_state(), strict=False)
    if unexpected or any(k.endswith(("lora_A", "lora_B")) for k in missing):
        raise ArlmError(f"{checkpoint.path} holds adapters of another shape than its config says")
    merged, fingerprint = merge_lora(model).eval(), checkpoint.meta.get("data_fingerprint")
    return LoadedModel(merged, checkpoint.tokenizer(), checkpoint.config, str(checkpoint.path), "float32", fingerprint)


def _base_candidates(reference: str) -> list[str]:
    """Where a LoRA run's base may be: its reference, then (a run folder that trained on since) each of its older
    checkpoints, newest first."""
    older = list_checkpoints(reference)[-2::-1]  # (none where the reference is no run folder)
    return [reference, *(str(path) for path in older)]


def peft_files(adapters: dict[str, torch.Tensor], config: RunConfig) -> dict[str, bytes]:
    """{file name: bytes} of the adapters in PEFT's layout for the transformers Llama model (nothing for gpt2)."""
    mc, lora = config.model, config.train.lora
    if mc.flavour != "llama":
        return {}
    q, kv, ffn = mc.n_head * mc.head_dim, mc.kv_heads * mc.head_dim, mc.ffn_dim
    tensors: dict[str, torch.Tensor] = {}
    for name, value in adapters.items():
        module, matrix = name.rsplit(".", 1)  # blocks.0.attn.qkv, lora_A
        layer, kind = module.split(".", 2)[1], module.split(".", 2)[2]
        prefix = f"base_model.model.model.layers.{layer}."
        if kind == "attn.qkv":
            names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
            parts = dict(zip(names, _rows(value, matrix, [q, kv, kv])))
        elif kind == "mlp.up":
            parts = dict(zip(("mlp.gate_proj", "mlp.up_proj"), _rows(value, matrix, [ffn, ffn])))
        else:
            parts = {HF_NAMES[kind]: value}
        for hf, tensor in parts.items():
            tensors[f"{prefix}{hf}.{matrix}.weight"] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
    modules = sorted({k.split(".")[-3] for k in tensors})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": config.train.init,
        "inference_mode": True,
    }
    return {
        f"{PEFT_DIR}/adapter_config.json": (json.dumps(adapter_config, indent=2) + "\n").encode(),
        f"{PEFT_DIR}/adapter_model.safetensors": save(tensors, metadata={"format": "pt"}),
    }


def _rows(value: torch.Tensor, matrix: str, sizes: list[int]) -> list[torch.Tensor]:
    """A fused projection's adapter for each of its parts: A is shared (each part gets a copy), B splits by rows."""
    return [value.clone() for _ in sizes] if matrix == "lora_A" else list(value.split(sizes))
