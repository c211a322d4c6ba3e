"""Next-token losses: cross-entropy with optional label smoothing, and the unsmoothed NLL always."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arlm.data.batches import IGNORE_INDEX


@dataclass
class LossOutput:
    """Summed losses over the predicted positions of a batch."""

    loss_sum: torch.Tensor  # scalar: what is minimised (smoothed when label_smoothing > 0)
    nll_sum: torch.Tensor  # scalar: unsmoothed negative log-likelihood, for logs and perplexity
    predicted: torch.Tensor  # scalar int64 on the logits' device: predicted (non-ignored) positions

    @property
    def count(self) -> int:
        """Predicted positions as a number (waits for the device: the trainer counts on the host instead)."""
        return int(self.predicted)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> LossOutput:
    """Sum of per-token losses for logits (B, T, V) against targets (B, T) (IGNORE_INDEX skipped).

    With smoothing eps the target distribution is (1 - eps) one-hot + eps uniform over V, so the loss is
    (1 - eps) * NLL + eps * mean_v(-log p_v), the same definition as torch.nn.CrossEntropyLoss.
    """
    flat_logits = logits.flatten(0, 1).float()  # (B*T, V)
    flat_targets = targets.flatten()  # (B*T,)
    keep = flat_targets != IGNORE_INDEX
    count = keep.sum()  # a tensor: no host sync in the training step
    if label_smoothing == 0.0:
        nll = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return LossOutput(nll, nll.detach(), count)
    logp = F.log_softmax(flat_logits, dim=-1)  # (B*T, V)
    safe_targets = flat_targets.masked_fill(~keep, 0)
    nll_tok = -logp.gather(1, safe_targets[:, None]).squeeze(1)  # (B*T,)
    uniform_tok = -logp.mean(dim=-1)  # (B*T,)
    loss_tok = (1.0 - label_smoothing) * nll_tok + label_smoothing * uniform_tok
    return LossOutput((loss_tok * keep).sum(), (nll_tok * keep).sum().detach(), count)


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Knowledge distillation: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the targets' loss (smoothed
    as next_token_loss's), summed over the predicted positions of (B, T, V) logits; the unsmoothed NLL of the
    student is reported alongside."""
    flat = logits.flatten(0, 1).float()  # (B*T, V)
    keep = targets.flatten() != IGNORE_INDEX  # (B*T,)
    hard = next_token_loss(flat[None], targets.flatten()[None], label_smoothing)  # (1, B*T, V): no second copy
    student_logp = F.log_softmax(flat / temperature, dim=-1)  # (B*T, V)
    teacher_logp = F.log_softmax(teacher_logits.flatten(0, 1).float() / temperature, dim=-1)  # (B*T, V)
    kl_tok = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)  # (B*T,)
    kl = (kl_tok * keep).sum() * temperature**2
    return LossOutput(alpha * kl + (1.0 - alpha) * hard.loss_sum, hard.nll_sum, hard.predicted)
