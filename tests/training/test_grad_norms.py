import math

import pytest
import torch

from arlm.config import ModelConfig
from arlm.model.transformer import Transformer
from arlm.training.grad_norms import layer_grad_norms
from arlm.training.loss import next_token_loss


def test_an_untied_head_and_learned_positions_have_their_norms():
    """Most of an untied model's gradient is in its head: it was in no logged group."""
    torch.manual_seed(0)
    config = ModelConfig(flavour="gpt2", vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=16)
    config.tie_embeddings = False
    model = Transformer(config)
    x = torch.randint(0, 50, (2, 16))
    loss = next_token_loss(model(x), x).loss_sum
    loss.backward()
    norms = layer_grad_norms(model)
    assert norms["gradnorm/head"] == float(model.lm_head.weight.grad.norm()) > 0
    assert norms["gradnorm/positions"] == float(model.pos_emb.weight.grad.norm()) > 0
    assert {f"gradnorm/L{i}/{p}" for i in range(2) for p in "qkvo"} | {"gradnorm/L1/mlp"} <= set(norms)


@pytest.mark.parametrize("flavour,tied", [("gpt2", False), ("gpt2", True), ("llama", True), ("llama", False)])
def test_the_groups_hold_every_trained_parameter_once(flavour, tied):
    """The squares of the logged norms sum to the square of the whole gradient's (the norm clipping reads): biases,
    layer norms and the final norm were in no group."""
    torch.manual_seed(0)
    config = ModelConfig(flavour=flavour, vocab_size=50, block_size=16, n_layer=2, n_head=4, d_model=16)
    config.tie_embeddings = tied
    if flavour == "llama":
        config.n_kv_head = 2
    model = Transformer(config)
    x = torch.randint(0, 50, (2, 16))
    loss = next_token_loss(model(x), x).loss_sum
    loss.backward()
    norms = layer_grad_norms(model)
    whole = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert math.isclose(math.sqrt(sum(n * n for n in norms.values())), float(whole), rel_tol=1e-5)
    assert {f"gradnorm/L{i}/norms" for i in range(2)} | {"gradnorm/final_norm"} <= set(norms)


def test_under_fsdp_the_groups_would_be_one_shard_and_are_refused():
    """Each process's norms were of its shard (the embedding's 0.51 where the whole is 0.93), logged as the whole."""
    from arlm.config import RunConfig
    from arlm.errors import ArlmError
    from arlm.training.distributed import DistInfo
    from arlm.training.trainer import Trainer

    config = RunConfig()
    config.train.grad_norms, config.train.parallel, config.train.grad_accum = True, "fsdp", 2
    model = Transformer(ModelConfig(flavour="llama", vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ArlmError, match="under FSDP would log each process's shard"):
        Trainer(config, None, model, run_dir="unused", device=torch.device("cpu"), info=DistInfo(0, 2, 0))
