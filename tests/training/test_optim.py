import math

import torch

from arlm.config import ModelConfig, TrainConfig
from arlm.model.transformer import Transformer
from arlm.training.optim import build_optimizer, lr_at


def test_warmup_then_cosine_to_the_floor():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert math.isclose(lr_at(0, c), 1e-3 / 11)
    assert math.isclose(lr_at(9, c), 1e-3 * 10 / 11)
    assert math.isclose(lr_at(10, c), 1e-3)
    assert math.isclose(lr_at(60, c), 1e-4 + 0.5 * (1e-3 - 1e-4))
    assert math.isclose(lr_at(110, c), 1e-4) and math.isclose(lr_at(500, c), 1e-4)
    values = [lr_at(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_decay_only_on_matrices():
    model = Transformer(ModelConfig(vocab_size=20, n_layer=1, n_head=2, d_model=16, bias=True))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    assert isinstance(opt, torch.optim.AdamW)
