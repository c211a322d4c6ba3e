import torch

from arlm.config import ModelConfig
from arlm.model.transformer import Transformer
from arlm.training.grad_norms import layer_grad_norms


def test_an_untied_head_and_learned_positions_have_their_norms():
    """Most of an untied model's gradient is in its head: it was in no logged group."""
    torch.manual_seed(0)
    config = ModelConfig(flavour="gpt2", vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=16)
    config.tie_embeddings = False
    model = Transformer(config)
    x = torch.randint(0, 50, (2, 16))
    _, loss = model(x, targets=x)
    loss.backward()
    norms = layer_grad_norms(model)
    assert norms["gradnorm/head"] == float(model.lm_head.weight.grad.norm()) > 0
    assert norms["gradnorm/positions"] == float(model.pos_emb.weight.grad.norm()) > 0
    assert {f"gradnorm/L{i}/{p}" for i in range(2) for p in "qkvo"} | {"gradnorm/L1/mlp"} <= set(norms)
