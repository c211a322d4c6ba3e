import json

import numpy as np
import pytest
import torch

from arlm.config import ModelConfig
from arlm.errors import ArlmError
from arlm.evaluation.exposure_bias import (
    ExposureBiasResult,
    default_lengths,
    exposure_bias,
    greedy_continuation,
    held_out_sequences,
)
from arlm.model.transformer import Transformer

P, L = 5, 12


def _random_model(vocab=40, block=32):
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=vocab, block_size=block, n_layer=2, n_head=2, d_model=32)
    return Transformer(config).eval()


def _sequences(n=10, vocab=40):
    return torch.randint(0, vocab, (n, P + L), generator=torch.Generator().manual_seed(3))


def test_curves_have_one_value_per_position_and_stay_in_range():
    res = exposure_bias(_random_model(), _sequences(), P, L, batch_size=4)
    assert (res.prompt_len, res.length, res.sequences) == (P, L, 10)
    for name in ("teacher_forced", "free_running"):
        loss, acc = getattr(res, f"{name}_loss"), getattr(res, f"{name}_accuracy")
        assert len(loss) == len(acc) == L
        assert all(v > 0 for v in loss) and all(0 <= v <= 1 for v in acc)
        assert all(v >= 0 for v in getattr(res, f"{name}_loss_se") + getattr(res, f"{name}_accuracy_se"))
    assert res.gap == pytest.approx(np.subtract(res.free_running_loss, res.teacher_forced_loss).tolist(), abs=1e-9)
    assert np.isfinite(res.gap_slope)
    summary = res.summary()
    assert list(summary["gap_at"]) == ["0", "1", "4", "11"]
    assert ExposureBiasResult.from_dict(json.loads(json.dumps(res.as_dict()))) == res


def test_standard_errors_are_numpys_of_the_sequences_and_the_gaps_are_paired():
    """The error bars were only checked to be >= 0: ddof 0, an unpaired gap or a missing sqrt(n) would pass."""
    from arlm.evaluation.exposure_bias import summarise

    g = np.random.default_rng(0)
    tf, fr = torch.tensor(g.gamma(2.0, 1.0, (9, 4))), torch.tensor(g.gamma(2.0, 1.2, (9, 4)))  # (N, L) NLLs
    tf_ok, fr_ok = torch.tensor(g.random((9, 4)) < 0.5).float(), torch.tensor(g.random((9, 4)) < 0.4).float()
    res = summarise(tf, fr, tf_ok, fr_ok, prompt_len=3)
    sem = lambda a: (np.std(np.asarray(a, dtype=np.float64), axis=0, ddof=1) / np.sqrt(9)).tolist()
    assert res.teacher_forced_loss_se == pytest.approx(sem(tf), rel=1e-12)
    assert res.free_running_accuracy_se == pytest.approx(sem(fr_ok), rel=1e-12)
    assert res.gap_se == pytest.approx(sem(fr.numpy() - tf.numpy()), rel=1e-12)  # paired: the SE of differences


@torch.no_grad()
def test_teacher_forced_curve_is_the_per_position_nll_of_a_plain_forward():
    model, seqs = _random_model(), _sequences()
    res = exposure_bias(model, seqs, P, L, batch_size=3)
    nll, correct = [], []
    for row in seqs:
        logp = torch.log_softmax(model(row[None, : P + L - 1])[0], dim=-1)  # (P+L-1, V)
        picked = logp[P - 1 :]  # predictions of positions P..P+L-1
        nll.append(-picked.gather(1, row[P:, None])[:, 0])
        correct.append((picked.argmax(-1) == row[P:]).float())
    assert res.teacher_forced_loss == pytest.approx(torch.stack(nll).mean(0).tolist(), rel=1e-5)
    assert res.teacher_forced_accuracy == pytest.approx(torch.stack(correct).mean(0).tolist())


def test_free_running_accuracy_counts_greedy_tokens_that_equal_the_gold_ones():
    model, seqs = _random_model(), _sequences()
    res = exposure_bias(model, seqs, P, L)
    generated = greedy_continuation(model, seqs[:, :P], L)[:, P:]  # (N, L)
    assert res.free_running_accuracy == pytest.approx((generated == seqs[:, P:]).float().mean(0).tolist())


def test_the_first_generated_position_sees_the_same_prefix_in_both_regimes():
    res = exposure_bias(_random_model(), _sequences(), P, L)
    assert res.free_running_loss[0] == res.teacher_forced_loss[0]
    assert res.free_running_accuracy[0] == res.teacher_forced_accuracy[0]
    assert res.gap[0] == 0.0
    assert max(abs(g) for g in res.gap[1:]) > 0.01  # an untrained model drifts off the gold text


def _copier(vocab: int, successor: torch.Tensor) -> Transformer:
    """A transformer that predicts successor[x] from the current token x with near certainty: the blocks
    add nothing to the residual stream, embeddings are one-hot, and the head maps x to its successor."""
    model = Transformer(
        ModelConfig(
            flavour="llama", vocab_size=vocab, block_size=32, n_layer=1, n_head=2, d_model=vocab, tie_embeddings=False
        )
    )
    with torch.no_grad():
        for p in model.blocks.parameters():
            p.zero_()
        model.tok_emb.weight.copy_(torch.eye(vocab))
        head = torch.zeros(vocab, vocab)
        head[successor, torch.arange(vocab)] = 10.0  # logit of successor[x] is 10 * ||norm(e_x)||
        model.lm_head.weight.copy_(head)
    return model.eval()


def test_a_model_that_predicts_the_text_perfectly_shows_no_gap():
    vocab = 16
    successor = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    seqs = torch.zeros(8, P + L, dtype=torch.long)
    seqs[:, 0] = torch.arange(8)
    for t in range(1, P + L):
        seqs[:, t] = successor[seqs[:, t - 1]]
    res = exposure_bias(_copier(vocab, successor), seqs, P, L)
    assert res.teacher_forced_accuracy == [1.0] * L and res.free_running_accuracy == [1.0] * L
    assert res.gap == [0.0] * L and res.gap_slope == 0.0
    assert max(res.teacher_forced_loss) < 1e-6


def test_held_out_sequences_and_bad_lengths():
    tokens = np.arange(100)
    seqs = held_out_sequences(tokens, 4, 10)
    assert seqs.shape == (4, 10)
    assert seqs[:, 0].tolist() == [0, 30, 60, 90]
    assert torch.equal(seqs[1], torch.arange(30, 40))
    many = held_out_sequences(tokens, 20, 10)  # never overlapping: the split holds 10 disjoint windows of 10
    assert many.shape == (10, 10) and many[:, 0].tolist() == list(range(0, 100, 10))
    with pytest.raises(ArlmError):
        held_out_sequences(tokens, 4, 101)
    assert default_lengths(128) == (32, 96)
    assert exposure_bias(_random_model(block=16), _sequences(), P, L).length == L  # P + L - 1 = 16 positions
    with pytest.raises(ArlmError):
        exposure_bias(_random_model(block=15), _sequences(), P, L)
    with pytest.raises(ArlmError):
        exposure_bias(_random_model(), _sequences()[:, :-1], P, L)
    with pytest.raises(ArlmError, match="prompt 16 \\+ length 1 needs 17 positions; the model's context is 16"):
        exposure_bias(_random_model(block=16), _sequences(), 16, 1)  # a prompt filling the context (decoding's rule)
    assert exposure_bias(_random_model(block=16), _sequences(), 15, 1).length == 1
