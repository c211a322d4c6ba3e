import numpy as np
import torch

from arlm.config import ModelConfig
from arlm.data.batches import BatchSampler
from arlm.evaluation.context import per_position_loss
from arlm.model.transformer import Transformer


def _model_and_sampler(blocks: int, seed: int) -> tuple[Transformer, BatchSampler, np.ndarray]:
    """A tiny random model (vocabulary 20, context 8) and a sampler over `blocks` blocks of random tokens."""
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=20, block_size=8, n_layer=1, n_head=2, d_model=16)
    ).eval()
    tokens = np.random.default_rng(seed).integers(0, 20, 8 * blocks + 1)
    return model, BatchSampler(tokens, np.array([0, len(tokens)]), block_size=8, seed=0), tokens


def test_per_position_loss_matches_a_plain_forward():
    model, sampler, tokens = _model_and_sampler(blocks=5, seed=0)
    loss, count = per_position_loss(model, sampler.eval_batches(batch_size=2))
    assert loss.shape == (8,) and count.tolist() == [5] * 8
    x = torch.from_numpy(tokens[:40].reshape(5, 8)).long()
    y = torch.from_numpy(tokens[1:41].reshape(5, 8)).long()
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(5, 8)
    np.testing.assert_allclose(loss, nll.mean(0).numpy(), rtol=1e-5)


def test_per_position_loss_scores_long_rows_a_few_at_a_time(monkeypatch):
    import arlm.evaluation.perplexity as ppl

    model, sampler, _ = _model_and_sampler(blocks=7, seed=1)
    whole, _ = per_position_loss(model, sampler.eval_batches(batch_size=4))
    monkeypatch.setattr(ppl, "LOGITS_BUDGET", 8 * 20)  # one row's logits a forward
    parts, count = per_position_loss(model, sampler.eval_batches(batch_size=4))
    assert count.tolist() == [7] * 8
    np.testing.assert_allclose(parts, whole, rtol=1e-6)
