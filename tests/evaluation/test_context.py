import numpy as np
import torch

from arlm.config import ModelConfig
from arlm.data.batches import BatchSampler
from arlm.evaluation.context import context_command, per_position_loss
from arlm.model.transformer import Transformer
from arlm.training.run import train_command
from tests.helpers import tiny_config


def test_per_position_loss_matches_a_plain_forward():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=20, block_size=8, n_layer=1, n_head=2, d_model=16)
    ).eval()
    tokens = np.random.default_rng(0).integers(0, 20, 8 * 5 + 1)
    sampler = BatchSampler(tokens, np.array([0, len(tokens)]), block_size=8, seed=0)
    loss, count = per_position_loss(model, sampler.eval_batches(batch_size=2))
    assert loss.shape == (8,) and count.tolist() == [5] * 8
    x = torch.from_numpy(tokens[:40].reshape(5, 8)).long()
    y = torch.from_numpy(tokens[1:41].reshape(5, 8)).long()
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(5, 8)
    np.testing.assert_allclose(loss, nll.mean(0).numpy(), rtol=1e-5)


def test_trained_model_gains_from_context(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 60, "lr": 1e-2})
    train_command(config, log=lambda _: None)
    curves = context_command([str(tmp_path / "run")], out=str(tmp_path / "ctx.png"), log=lambda _: None)
    curve = curves["run"]
    assert len(curve) == 32 and curve[0] > np.mean(curve[8:])  # the first token has no context to use
    assert (tmp_path / "ctx.png").exists()
