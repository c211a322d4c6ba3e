"""LoRA (Hu et al. 2021): a frozen nn.Linear W plus a trained low-rank update, y = W x + (alpha / r) B A x.

A (r, in) starts random and B (out, r) at zero, so an adapted model computes exactly what its base did until it
trains. `add_lora` wraps the chosen projections and freezes everything else; `merge_lora` folds B A into W.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from arlm.config import LoRAConfig

TARGET_GROUPS = {"attn": ("qkv", "proj"), "mlp": ("up", "down")}


class LoRALinear(nn.Module):
    """A frozen nn.Linear with a trainable low-rank update (PEFT's parameter names: lora_A, lora_B)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT initialise A
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out). Under autocast (16-bit training) the update is folded into the weight first, so
        that the forward is the merged model's at 16 bits (W + (alpha / r) B A, rounded): added to W x after W x was
        rounded, an update below half a unit of its last place (every update at first: B starts at zero) was rounded
        away whole, a forward of no model saved. Where W's values lie on the 16-bit grid (a bfloat16 or quantized
        base), a very young adapter's change is rounded as that merged model rounds it (kept or moved by half a unit
        per weight), not as float32 computes it. The gradients are float32's either way."""
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # B A in float32, as merged() folds it
                weight = self.base.weight + (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
            y = nn.functional.linear(x, weight, self.base.bias)  # (..., out)
            if self.training and self.dropout.p > 0:  # the dropped inputs' share of the update taken back
                y = y + (self.dropout(x) - x) @ self.lora_A.to(x.dtype).T @ self.lora_B.to(x.dtype).T * self.scaling
            return y
        update = self.dropout(x) @ self.lora_A.to(x.dtype).T @ self.lora_B.to(x.dtype).T  # (..., out)
        return self.base(x) + update * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with B A folded into its weight."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        with torch.no_grad():
            self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def target_names(config: LoRAConfig) -> set[str]:
    """Projection names (qkv, proj, up, down) that train.lora.targets stands for."""
    return {name for t in config.targets for name in TARGET_GROUPS.get(t, (t,))}


def add_lora(model: nn.Module, config: LoRAConfig) -> int:
    """Freeze the model and wrap its targeted projections in LoRALinear; returns the trainable parameter count."""
    model.requires_grad_(False)
    wanted = target_names(config)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in wanted and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, config.rank, config.alpha, config.dropout))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged Linear (in place); returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether the model holds adapters."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def is_adapter_key(name: str) -> bool:
    """Whether a state-dict key names an adapter matrix."""
    return name.endswith((".lora_A", ".lora_B"))


def base_key(name: str) -> str:
    """The key a weight has in the plain model ('blocks.0.attn.qkv.base.weight' -> 'blocks.0.attn.qkv.weight')."""
    return name.replace(".base.", ".")


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (adapters left out): the base model's identity."""
    digest = hashlib.sha256()
    for name in sorted(k for k in state if not is_adapter_key(k)):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{base_key(name)}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
