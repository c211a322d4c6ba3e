"""AdamW with weight-decay groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from arlm.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW; matrices and embeddings decay, biases and norm gains do not; the fused kernel (CPU and CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = {"fused": True} if device_type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), **kernel)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr over warmup_steps, cosine decay to min_lr at lr_decay_steps, then min_lr."""
    decay_steps = config.lr_decay_steps or config.max_steps
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if step >= decay_steps:
        return config.min_lr
    ratio = (step - config.warmup_steps) / max(decay_steps - config.warmup_steps, 1)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (config.lr - config.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
