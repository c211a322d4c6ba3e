"""Exposure bias: how much worse a model predicts held-out text once it runs on its own output.

Each held-out sequence is P gold prompt tokens followed by L gold continuation tokens. Teacher forcing
scores gold token P+j given the gold prefix; free running first generates L tokens greedily from the prompt,
then scores gold token P+j given the prompt and the model's own first j tokens, and counts the model's
prediction there as correct when it equals the gold token. At j = 0 both see the same prefix. The gap (free
running minus teacher forcing) over j shows how errors compound; `arlm eval exposure-bias` measures runs and
`arlm study exposure-bias` compares plain training with scheduled sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.errors import ArlmError


@dataclass
class ExposureBiasResult:
    """Per-position curves (means over sequences, with standard errors) and a summary of the gap."""

    prompt_len: int
    length: int
    sequences: int
    teacher_forced_loss: list[float]  # (L,) mean NLL of gold token P+j given the gold prefix
    teacher_forced_loss_se: list[float]
    free_running_loss: list[float]  # (L,) mean NLL of gold token P+j given the model's own prefix
    free_running_loss_se: list[float]
    teacher_forced_accuracy: list[float]  # (L,) top-1 prediction == gold token, gold prefix
    teacher_forced_accuracy_se: list[float]
    free_running_accuracy: list[float]  # (L,) top-1 prediction == gold token, own prefix
    free_running_accuracy_se: list[float]
    gap: list[float]  # (L,) mean paired difference free running - teacher forcing (loss)
    gap_se: list[float]
    gap_slope: float  # least-squares slope of the mean loss gap against position (nats per position)

    def gap_at(self, positions: Sequence[int] | None = None) -> dict[int, float]:
        """Mean loss gap at a few positions (default 0, 1, 4, 16, ... and the last)."""
        if positions is None:
            positions, k = {0, self.length - 1}, 1
            while k < self.length:
                positions, k = positions | {k}, 4 * k
            positions = sorted(positions)
        return {j: self.gap[j] for j in positions if 0 <= j < self.length}

    def summary(self) -> dict:
        """Mean losses and accuracies over all positions, the gap at a few positions, and its slope."""
        return {
            "teacher_forced_loss": float(np.mean(self.teacher_forced_loss)),
            "free_running_loss": float(np.mean(self.free_running_loss)),
            "teacher_forced_accuracy": float(np.mean(self.teacher_forced_accuracy)),
            "free_running_accuracy": float(np.mean(self.free_running_accuracy)),
            "mean_gap": float(np.mean(self.gap)),
            "gap_at": {str(j): g for j, g in self.gap_at().items()},
            "gap_slope": self.gap_slope,
        }

    def as_dict(self) -> dict:
        """JSON-ready dict (curves and summary)."""
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, record: dict) -> ExposureBiasResult:
        """The result back from as_dict()'s output (the summary is recomputed, not read)."""
        return cls(**{k: v for k, v in record.items() if k != "summary"})


def _mean_se(values: torch.Tensor) -> tuple[list[float], list[float]]:
    """Column means and standard errors of (N, L) values."""
    v = values.double()
    n = v.shape[0]
    se = v.std(dim=0, unbiased=True) / math.sqrt(n) if n > 1 else torch.zeros(v.shape[1], dtype=torch.float64)
    return v.mean(dim=0).tolist(), se.tolist()


def summarise(
    tf_nll: torch.Tensor, fr_nll: torch.Tensor, tf_correct: torch.Tensor, fr_correct: torch.Tensor, prompt_len: int
) -> ExposureBiasResult:
    """ExposureBiasResult from per-sequence (N, L) losses and correctness under both regimes."""
    n, length = tf_nll.shape
    tf_loss, tf_loss_se = _mean_se(tf_nll)
    fr_loss, fr_loss_se = _mean_se(fr_nll)
    tf_acc, tf_acc_se = _mean_se(tf_correct)
    fr_acc, fr_acc_se = _mean_se(fr_correct)
    gap, gap_se = _mean_se(fr_nll.double() - tf_nll.double())
    positions = np.arange(length, dtype=np.float64)
    slope = float(np.polyfit(positions, np.asarray(gap), 1)[0]) if length > 1 else 0.0
    return ExposureBiasResult(
        prompt_len, length, n, tf_loss, tf_loss_se, fr_loss, fr_loss_se, tf_acc, tf_acc_se, fr_acc, fr_acc_se,
        gap, gap_se, slope,
    )  # fmt: skip


@torch.no_grad()
def greedy_continuation(model: torch.nn.Module, prompts: torch.Tensor, length: int) -> torch.Tensor:
    """Prompts (B, P) followed by `length` greedily generated tokens: (B, P + length)."""
    config = GenerationConfig(strategy="greedy", max_new_tokens=length, stop_at_eos=False)
    return generate(model, prompts, config).sequences[:, : prompts.shape[1] + length]


@torch.no_grad()
def exposure_bias(
    model: torch.nn.Module, sequences: torch.Tensor, prompt_len: int, length: int, *, batch_size: int = 64
) -> ExposureBiasResult:
    """Teacher-forced vs free-running loss and accuracy at each of `length` positions after a gold prompt of
    `prompt_len` tokens, over gold sequences (N, >= prompt_len + length)."""
    P, L = prompt_len, length
    if P < 1 or L < 1:
        raise ArlmError(f"prompt length and length must be at least 1, got {P} and {L}")
    if sequences.dim() != 2 or sequences.shape[1] < P + L or sequences.shape[0] < 1:
        raise ArlmError(f"need (N, >= {P + L}) gold sequences, got shape {tuple(sequences.shape)}")
    needed, block = max(P + 1, P + L - 1), model.config.block_size  # (decoding refuses a prompt filling the context)
    if needed > block:
        raise ArlmError(f"prompt {P} + length {L} needs {needed} positions; the model's context is {block}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, sequences.shape[0], batch_size):
        gold = sequences[i : i + batch_size, : P + L].long().to(device)  # (b, P+L)
        b = gold.shape[0]
        free = greedy_continuation(model, gold[:, :P], L)  # (b, P+L): prompt + own tokens
        inputs = torch.cat([gold, free])[:, :-1]  # (2b, P+L-1): one forward for both regimes
        logits = model(inputs)[:, P - 1 :].float()  # (2b, L, V): predictions of positions P..P+L-1
        targets = gold[:, P:].repeat(2, 1)  # (2b, L): always the gold tokens
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (2b, L)
        correct = (logits.argmax(dim=-1) == targets).float()  # (2b, L)
        for part, value in zip(parts, (nll[:b], nll[b:], correct[:b], correct[b:])):
            part.append(value.cpu())
    model.train(was_training)
    return summarise(*(torch.cat(p) for p in parts), prompt_len=P)


def held_out_sequences(tokens: np.ndarray, n_sequences: int, width: int) -> torch.Tensor:
    """(n, width) windows of a token stream at evenly spaced offsets, never overlapping (fewer than n where the
    stream holds fewer disjoint ones: overlapping windows are not independent samples, and the standard errors
    would be too small); windows may span a document boundary, as packed training blocks do."""
    if len(tokens) < width:
        raise ArlmError(f"the split holds {len(tokens)} tokens, fewer than one sequence of {width}")
    if n_sequences < 1:
        raise ArlmError(f"n_sequences must be at least 1, got {n_sequences}")
    n_sequences = min(n_sequences, len(tokens) // width)
    offsets = np.linspace(0, len(tokens) - width, n_sequences).round().astype(np.int64)  # (spaced >= width apart)
    return torch.from_numpy(np.stack([np.asarray(tokens[o : o + width], dtype=np.int64) for o in offsets]))


def default_lengths(block_size: int, prompt_len: int | None = None, length: int | None = None) -> tuple[int, int]:
    """Prompt and continuation lengths: those given, else a quarter of the context as prompt, the rest
    continuation (a 0 given stays 0, for exposure_bias to refuse)."""
    prompt_len = max(block_size // 4, 1) if prompt_len is None else prompt_len
    length = max(block_size - prompt_len, 1) if length is None else length
    return prompt_len, length


def format_summary(results: dict[str, ExposureBiasResult]) -> str:
    """Plain-text summary: one row per run."""
    width = max([len(k) for k in results] + [3])
    any_result = next(iter(results.values()))
    shown = list(any_result.gap_at())
    head = "".join(f"{'gap@' + str(j):>9}" for j in shown)
    lines = [f"{'run':<{width}}  {'TF loss':>8}{'FR loss':>8}{'TF acc':>8}{'FR acc':>8}{head}{'slope':>10}"]
    for label, r in results.items():
        s = r.summary()
        gaps = "".join(f"{r.gap[j]:>9.3f}" if j < r.length else f"{'-':>9}" for j in shown)
        lines.append(
            f"{label:<{width}}  {s['teacher_forced_loss']:>8.3f}{s['free_running_loss']:>8.3f}"
            f"{s['teacher_forced_accuracy']:>8.3f}{s['free_running_accuracy']:>8.3f}{gaps}{r.gap_slope:>10.4f}"
        )
    return "\n".join(lines)
