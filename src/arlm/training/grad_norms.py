"""Backpropagation made visible: gradient norms per layer, per attention projection and MLP."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """{'gradnorm/L{i}/{q,k,v,o,mlp,norms}': norm} for every block (each projection with its bias), plus the embedding
    table, the learned positions (GPT-2), the final norm and an untied output head: every trained parameter in one
    group, so that the squares of the norms sum to the square of the whole gradient's; with LoRA adapters (the weights
    frozen) {'gradnorm/L{i}/{attn,mlp}'}: the norm of the adapters' gradients in each."""
    out: dict[str, float] = {}
    for i, block in enumerate(model.blocks):
        attn = block.attn
        if not hasattr(attn.qkv, "weight"):  # a LoRALinear: its base weight is frozen, its adapters train
            out.update({f"gradnorm/L{i}/{name}": _norm(part) for name, part in (("attn", attn), ("mlp", block.mlp))})
            continue
        if attn.qkv.weight.grad is None:
            continue
        q_rows, kv_rows = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
        rows = [q_rows, kv_rows, kv_rows]  # of the fused projection: q, k, v
        fused = [attn.qkv.weight.grad.split(rows, dim=0)]  # 3 x (rows, d_model)
        if attn.qkv.bias is not None and attn.qkv.bias.grad is not None:
            fused.append(attn.qkv.bias.grad.split(rows, dim=0))  # 3 x (rows,)
        parts = {name: _grads(list(pieces)) for name, *pieces in zip("qkv", *fused)}
        parts["o"] = _grads([p.grad for p in attn.proj.parameters()])
        parts["mlp"] = _grads([p.grad for p in block.mlp.parameters()])
        parts["norms"] = _grads([p.grad for m in (block.norm1, block.norm2) for p in m.parameters()])
        out.update({f"gradnorm/L{i}/{name}": norm for name, norm in parts.items() if norm is not None})
    if model.tok_emb.weight.grad is not None:
        out["gradnorm/embedding"] = float(model.tok_emb.weight.grad.float().norm())
    extra = {
        "positions": model.pos_emb,
        "final_norm": model.norm,
        "head": None if model.lm_head.weight is model.tok_emb.weight else model.lm_head,
    }
    norms = {f"gradnorm/{name}": _norm(m) for name, m in extra.items() if m is not None}
    out.update({name: norm for name, norm in norms.items() if norm > 0})
    return out


def _grads(grads: list[torch.Tensor | None]) -> float | None:
    """The norm of the gradients given (None where none is)."""
    flat = [g.flatten() for g in grads if g is not None]
    return float(torch.cat(flat).float().norm()) if flat else None


def _norm(module: nn.Module) -> float:
    """The norm of the gradients of a module's parameters that have one (0 where none has)."""
    return _grads([p.grad for p in module.parameters()]) or 0.0
