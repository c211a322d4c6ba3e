"""Backpropagation made visible: gradient norms per layer, per attention projection and MLP."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """{'gradnorm/L{i}/{q,k,v,o,mlp}': norm} for every block, plus the embedding table."""
    out: dict[str, float] = {}
    for i, block in enumerate(model.blocks):
        attn = block.attn
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
    return out
