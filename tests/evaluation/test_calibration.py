import math

import pytest
import torch

from arlm.config import ModelConfig
from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.errors import ArlmError
from arlm.evaluation.calibration import (
    CalibrationAccumulator,
    calibration,
    calibration_from_logits,
)
from arlm.evaluation.perplexity import evaluate_batches, result
from arlm.model.transformer import Transformer

# Four predictions whose top-1 probability and correctness are set by hand, and one ignored position.
PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.03, 0.02],  # confidence 0.9, target 0: correct
        [0.70, 0.10, 0.10, 0.10],  # confidence 0.7, target 1: wrong
        [0.40, 0.30, 0.20, 0.10],  # confidence 0.4, target 0: correct
        [0.30, 0.25, 0.25, 0.20],  # confidence 0.3, target 2: wrong
        [0.97, 0.01, 0.01, 0.01],  # ignored
    ]
)
TARGETS = torch.tensor([0, 1, 0, 2, IGNORE_INDEX])


def test_ece_and_mce_match_a_hand_computed_case():
    res = calibration_from_logits(PROBS.log()[None], TARGETS[None], n_bins=2)
    # bin [0, 0.5): confidences 0.4, 0.3 (mean 0.35), one correct (0.5) -> gap 0.15
    # bin [0.5, 1]: confidences 0.9, 0.7 (mean 0.8), one correct (0.5) -> gap 0.30
    assert res.tokens == 4
    assert res.bin_counts == [2, 2]
    assert res.bin_confidence == pytest.approx([0.35, 0.8])
    assert res.bin_accuracy == pytest.approx([0.5, 0.5])
    assert res.ece == pytest.approx(0.5 * 0.15 + 0.5 * 0.30)
    assert res.mce == pytest.approx(0.30)
    assert res.confidence == pytest.approx((0.9 + 0.7 + 0.4 + 0.3) / 4)
    assert res.accuracy == pytest.approx(0.5)
    assert res.overconfidence == pytest.approx(0.075)
    assert res.nll == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.4) + math.log(0.25)) / 4)
    brier = [
        0.1**2 + 0.05**2 + 0.03**2 + 0.02**2,
        0.7**2 + 0.9**2 + 0.1**2 + 0.1**2,
        0.6**2 + 0.3**2 + 0.2**2 + 0.1**2,
        0.3**2 + 0.25**2 + 0.75**2 + 0.2**2,
    ]
    assert res.brier == pytest.approx(sum(brier) / 4)


def test_empty_bins_are_reported_as_none_and_batches_accumulate():
    res = calibration_from_logits(PROBS.log(), TARGETS, n_bins=4)
    assert res.bin_counts == [0, 2, 1, 1]
    assert res.bin_confidence[0] is None and res.bin_accuracy[0] is None
    assert res.ece == pytest.approx((2 * 0.15 + 0.7 + 0.1) / 4)
    assert res.mce == pytest.approx(0.7)
    acc = CalibrationAccumulator(4)
    acc.add(PROBS[:2].log(), TARGETS[:2])
    acc.add(PROBS[2:].log(), TARGETS[2:])
    assert acc.result() == res
    with pytest.raises(ArlmError):
        calibration_from_logits(PROBS.log(), torch.full((5,), IGNORE_INDEX))


class TableModel(torch.nn.Module):
    """Next-token logits looked up from the current token (a bigram model)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(logits, freeze=True)
        self.config = ModelConfig(vocab_size=logits.shape[1])  # (what calibration reads: the logits' width)

    def forward(self, x, attention_mask=None):
        return self.table(x)  # (B, T, V)


def _batches_from_own_distribution(logits: torch.Tensor, n_batches: int, rows: int = 64, T: int = 64):
    """Batches whose targets are sampled from the table model's own next-token distribution."""
    gen = torch.Generator().manual_seed(1)
    V = logits.shape[0]
    probs = logits.softmax(-1)
    for _ in range(n_batches):
        x = torch.randint(0, V, (rows, T), generator=gen)
        y = torch.multinomial(probs[x.flatten()], 1, generator=gen).view(rows, T)
        yield Batch(x, y)


def test_a_model_scored_on_its_own_samples_is_calibrated_and_a_sharpened_one_is_not():
    torch.manual_seed(0)
    logits = 2.5 * torch.randn(50, 50)
    calibrated = calibration(TableModel(logits), _batches_from_own_distribution(logits, 20))
    assert calibrated.tokens == 20 * 64 * 64
    assert calibrated.ece < 0.01
    assert abs(calibrated.overconfidence) < 0.01
    assert sum(1 for c in calibrated.bin_counts if c) >= 10  # confidences spread over the range
    sharpened = calibration(TableModel(3 * logits), _batches_from_own_distribution(logits, 20))
    assert sharpened.ece > 0.1 and sharpened.overconfidence > 0.1


def test_figures_of_a_small_transformer_are_in_range_and_nll_matches_the_perplexity_code():
    model = Transformer(ModelConfig(flavour="llama", vocab_size=40, block_size=16, n_layer=1, n_head=2, d_model=16))
    batches = [Batch(torch.randint(0, 40, (4, 16)), torch.randint(0, 40, (4, 16))) for _ in range(3)]
    res = calibration(model, batches)
    assert res.tokens == sum(res.bin_counts) == 3 * 4 * 16
    assert 0 <= res.ece <= res.mce <= 1
    assert 1 / 40 <= res.confidence <= 1 and 0 <= res.accuracy <= 1
    assert 0 <= res.brier <= 2
    for conf, acc, k in zip(res.bin_confidence, res.bin_accuracy, range(res.n_bins)):
        if conf is not None:
            assert k / res.n_bins <= conf <= (k + 1) / res.n_bins and 0 <= acc <= 1
    nll, count, _ = evaluate_batches(model, batches)
    assert res.nll == pytest.approx(result(nll, count).loss, rel=1e-5)


def test_long_rows_are_scored_a_few_at_a_time_with_the_same_figures(monkeypatch):
    """SmolLM2's blocks (8,192 tokens x 49,152 logits, 16 rows) did not fit in memory: a forward takes the rows whose
    logits fit LOGITS_BUDGET, add() copies POSITIONS_AT_ONCE positions at a time; the figures are the same."""
    import arlm.evaluation.calibration as cal
    import arlm.evaluation.perplexity as ppl

    torch.manual_seed(0)
    model = Transformer(ModelConfig(flavour="llama", vocab_size=40, block_size=16, n_layer=1, n_head=2, d_model=16))
    batches = [Batch(torch.randint(0, 40, (5, 16)), torch.randint(0, 40, (5, 16))) for _ in range(2)]
    whole = calibration(model, batches)
    rows, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x, **kw: rows.append(x.shape[0]) or forward(x, **kw))
    monkeypatch.setattr(ppl, "LOGITS_BUDGET", 2 * 16 * 40)  # two rows' logits
    monkeypatch.setattr(cal, "POSITIONS_AT_ONCE", 7)
    parts = calibration(model, batches)
    assert rows == [2, 2, 1, 2, 2, 1]
    assert parts.bin_counts == whole.bin_counts and parts.ece == pytest.approx(whole.ece, rel=1e-9)
    assert parts.nll == pytest.approx(whole.nll, rel=1e-9) and parts.brier == pytest.approx(whole.brier, rel=1e-9)
