"""Calibration of next-token predictions: reliability bins, ECE and MCE, NLL and Brier score, the
measured over batches (teacher forcing); `arlm eval calibration` and `arlm study calibration` report them.

A prediction is the model's top-1 token; its confidence is that token's softmax probability and it is
correct when it equals the target. Confidences fall into equal-width bins [k/n, (k+1)/n) over [0, 1]
(the last bin also holds 1.0); ECE = sum_b n_b/N * |accuracy_b - confidence_b| and MCE = max_b of the same
gap over non-empty bins (Guo et al., 2017)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.errors import ArlmError
from arlm.evaluation.defaults import N_BINS
from arlm.evaluation.perplexity import scoring_parts

POSITIONS_AT_ONCE = 1024  # positions whose (n, V) float64 copies add() makes at once


@dataclass
class CalibrationResult:
    """Reliability bins and summary figures of a model's top-1 next-token predictions."""

    n_bins: int
    bin_counts: list[int]  # predictions per bin
    bin_confidence: list[float | None]  # mean top-1 probability per bin (None: empty bin)
    bin_accuracy: list[float | None]  # fraction correct per bin (None: empty bin)
    tokens: int
    ece: float  # expected calibration error
    mce: float  # maximum calibration error (over non-empty bins)
    confidence: float  # mean top-1 probability
    accuracy: float  # top-1 accuracy
    nll: float  # mean negative log-likelihood of the target (nats/token)
    brier: float  # mean multi-class Brier score: sum_v (p_v - [v = target])^2

    @property
    def overconfidence(self) -> float:
        """Mean confidence minus accuracy (> 0: over-confident, < 0: under-confident)."""
        return self.confidence - self.accuracy

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return {**asdict(self), "overconfidence": self.overconfidence}


class CalibrationAccumulator:
    """Running per-bin sums of confidence and correctness over batches of logits and targets."""

    def __init__(self, n_bins: int = N_BINS) -> None:
        if n_bins < 1:
            raise ArlmError(f"the number of calibration bins must be at least 1, got {n_bins}")
        self.n_bins = n_bins
        self.counts = torch.zeros(n_bins, dtype=torch.float64)
        self.confidence_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.correct_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.nll_sum = self.brier_sum = 0.0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add logits (..., V) against targets (...); IGNORE_INDEX targets are skipped."""
        flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
        flat_targets = targets.reshape(-1).to(flat.device)  # (N,)
        for start in range(0, flat.shape[0], POSITIONS_AT_ONCE):  # (float64 copies of (n, V) kept to a size)
            end = start + POSITIONS_AT_ONCE
            self._add(flat[start:end].float(), flat_targets[start:end])

    def _add(self, flat: torch.Tensor, flat_targets: torch.Tensor) -> None:
        """add() over logits (N, V) and targets (N,)."""
        keep = flat_targets != IGNORE_INDEX
        logp = F.log_softmax(flat[keep], dim=-1).double()  # (n, V)
        target = flat_targets[keep][:, None]  # (n, 1)
        top_logp, predicted = logp.max(dim=-1)  # (n,) each
        confidence = top_logp.exp()  # (n,)
        correct = (predicted == target[:, 0]).double()  # (n,)
        target_logp = logp.gather(1, target)[:, 0]  # (n,)
        probs = logp.exp()  # (n, V)
        brier = probs.square().sum(dim=-1) - 2 * target_logp.exp() + 1  # (n,)
        bins = (confidence * self.n_bins).long().clamp(max=self.n_bins - 1).cpu()  # (n,)
        self.counts += torch.bincount(bins, minlength=self.n_bins).double()
        self.confidence_sum += torch.bincount(bins, weights=confidence.cpu(), minlength=self.n_bins)
        self.correct_sum += torch.bincount(bins, weights=correct.cpu(), minlength=self.n_bins)
        self.nll_sum -= float(target_logp.sum())
        self.brier_sum += float(brier.sum())

    def result(self) -> CalibrationResult:
        """The figures over everything added so far."""
        total = float(self.counts.sum())
        if total == 0:
            raise ArlmError("no predictions to measure calibration on (every target was ignored)")
        filled = self.counts > 0
        safe = self.counts.clamp(min=1)
        conf, acc = self.confidence_sum / safe, self.correct_sum / safe  # (n_bins,) each
        gaps = (acc - conf).abs()  # (n_bins,)
        return CalibrationResult(
            n_bins=self.n_bins,
            bin_counts=[int(c) for c in self.counts],
            bin_confidence=[float(c) if f else None for c, f in zip(conf, filled)],
            bin_accuracy=[float(a) if f else None for a, f in zip(acc, filled)],
            tokens=int(total),
            ece=float((self.counts * gaps).sum() / total),
            mce=float(gaps[filled].max()),
            confidence=float(self.confidence_sum.sum() / total),
            accuracy=float(self.correct_sum.sum() / total),
            nll=self.nll_sum / total,
            brier=self.brier_sum / total,
        )


def calibration_from_logits(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> CalibrationResult:
    """Calibration of logits (..., V) against targets (...)."""
    acc = CalibrationAccumulator(n_bins)
    acc.add(logits, targets)
    return acc.result()


@torch.no_grad()
def calibration(model: torch.nn.Module, batches: Iterable[Batch], n_bins: int = N_BINS) -> CalibrationResult:
    """Calibration of a model's next-token predictions over batches of a split (teacher forcing)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    acc = CalibrationAccumulator(n_bins)
    for part in scoring_parts(model, batches):
        part = part.to(device)
        acc.add(model(part.x, attention_mask=part.attention_mask), part.y)  # logits (b, T, V)
    model.train(was_training)
    return acc.result()


def format_table(results: dict[str, CalibrationResult]) -> str:
    """A plain-text table: one row per run."""
    width = max([len(k) for k in results] + [3])
    lines = [f"{'run':<{width}}  {'ECE':>7}{'MCE':>8}{'conf':>8}{'acc':>8}{'NLL':>8}{'Brier':>8}{'tokens':>10}"]
    for label, r in results.items():
        lines.append(
            f"{label:<{width}}  {r.ece:>7.4f}{r.mce:>8.4f}{r.confidence:>8.4f}{r.accuracy:>8.4f}"
            f"{r.nll:>8.4f}{r.brier:>8.4f}{r.tokens:>10,}"
        )
    return "\n".join(lines)
