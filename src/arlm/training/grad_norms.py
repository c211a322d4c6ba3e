"""Backpropagation made visible: gradient norms per layer, per attention projection and MLP."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """{'gradnorm/L{i}/{q,k,v,o,mlp}': norm} for every block, plus the embedding table, the learned positions
    (GPT-2) and an untied output head; with LoRA adapters (the weights frozen) {'gradnorm/L{i}/{attn,mlp}'}: the
    norm of the adapters' gradients in each."""
    out: dict[str, float] = {}
    for i, block in enumerate(model.blocks):
        attn = block.attn
        if not hasattr(attn.qkv, "weight"):  # a LoRALinear: its base weight is frozen, its adapters train
            out.update({f"gradnorm/L{i}/{name}": _norm(part) for name, part in (("attn", attn), ("mlp", block.mlp))})
            continue
        grad = attn.qkv.weight.grad
        if grad is None:
            continue
        q_rows, kv_rows = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
        q, k, v = grad.split([q_rows, kv_rows, kv_rows], dim=0)  # rows of the fused projection
        parts = {"q": q, "k": k, "v": v, "o": attn.proj.weight.grad}
        parts["mlp"] = torch.cat([p.grad.flatten() for p in block.mlp.parameters() if p.grad is not None])
        for name, g in parts.items():
            out[f"gradnorm/L{i}/{name}"] = float(g.float().norm())
    if model.tok_emb.weight.grad is not None:
        out["gradnorm/embedding"] = float(model.tok_emb.weight.grad.float().norm())
    extra = {
        "positions": model.pos_emb,
        "head": None if model.lm_head.weight is model.tok_emb.weight else model.lm_head,
    }
    norms = {f"gradnorm/{name}": _norm(m) for name, m in extra.items() if m is not None}
    out.update({name: norm for name, norm in norms.items() if norm > 0})
    return out


def _norm(module: nn.Module) -> float:
    """The norm of the gradients of a module's parameters that have one (0 where none has)."""
    grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).float().norm()) if grads else 0.0
