import math

import torch

from arlm.data.batches import IGNORE_INDEX
from arlm.training.loss import next_token_loss


def test_label_smoothing_against_a_hand_computed_case():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])  # (B=1, T=1, V=3)
    target = torch.tensor([[0]])
    z = math.exp(2.0) + math.exp(0.0) + math.exp(-1.0)
    logp = [2.0 - math.log(z), 0.0 - math.log(z), -1.0 - math.log(z)]
    nll = -logp[0]
    eps = 0.1
    smoothed = (1 - eps) * nll + eps * (-sum(logp) / 3)  # target distribution: 0.9 one-hot + 0.1 uniform
    out = next_token_loss(logits, target, label_smoothing=eps)
    assert math.isclose(float(out.loss_sum), smoothed, rel_tol=1e-6)
    assert math.isclose(float(out.nll_sum), nll, rel_tol=1e-6)
    reference = torch.nn.functional.cross_entropy(logits[0], target[0], label_smoothing=eps)
    assert math.isclose(float(out.loss_sum), float(reference), rel_tol=1e-6)


def test_ignored_targets_count_nothing():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    targets[1, 2:] = IGNORE_INDEX
    for eps in (0.0, 0.2):
        out = next_token_loss(logits, targets, eps)
        assert out.count == 7
        keep = targets != IGNORE_INDEX
        reference = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum", label_smoothing=eps)
        torch.testing.assert_close(out.loss_sum, reference)


def test_distillation_loss_is_zero_for_a_perfect_student_and_matches_kl():
    from arlm.training.loss import distillation_loss

    teacher = torch.randn(2, 3, 11)
    targets = torch.randint(0, 11, (2, 3))
    same = distillation_loss(teacher.clone(), teacher, targets, temperature=2.0, alpha=1.0)
    assert abs(float(same.loss_sum)) < 1e-5
    student = torch.randn(2, 3, 11)
    out = distillation_loss(student, teacher, targets, temperature=1.0, alpha=1.0)
    p = teacher.softmax(-1)
    expected = (p * (p.log() - student.log_softmax(-1))).sum()
    assert math.isclose(float(out.loss_sum), float(expected), rel_tol=1e-5)
    mixed = distillation_loss(student, teacher, targets, temperature=1.0, alpha=0.25)
    assert math.isclose(float(mixed.loss_sum), 0.25 * float(expected) + 0.75 * float(out.nll_sum), rel_tol=1e-5)


def test_distillation_smooths_its_target_term_as_cross_entropy_does():
    """(1 - alpha) of the loss is torch's label-smoothed cross-entropy; the reported NLL stays unsmoothed."""
    from arlm.training.loss import distillation_loss

    torch.manual_seed(3)
    student, teacher = torch.randn(2, 4, 13), torch.randn(2, 4, 13)
    targets = torch.randint(0, 13, (2, 4))
    targets[1, 3] = IGNORE_INDEX
    kl = distillation_loss(student, teacher, targets, temperature=2.0, alpha=1.0).loss_sum
    out = distillation_loss(student, teacher, targets, temperature=2.0, alpha=0.4, label_smoothing=0.2)
    keep = targets != IGNORE_INDEX
    smoothed = torch.nn.functional.cross_entropy(student[keep], targets[keep], reduction="sum", label_smoothing=0.2)
    plain = torch.nn.functional.cross_entropy(student[keep], targets[keep], reduction="sum")
    torch.testing.assert_close(out.loss_sum, 0.4 * kl + 0.6 * smoothed)
    torch.testing.assert_close(out.nll_sum, plain)
    assert int(out.predicted) == 7
