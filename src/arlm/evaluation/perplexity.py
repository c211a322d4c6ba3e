"""Loss, perplexity and bits per byte: over batches of a split, or over a long text by sliding window."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.training.loss import next_token_loss


@dataclass
class EvalResult:
    """Mean NLL (nats/token) over `tokens` predicted tokens, perplexity, and bits per byte when known."""

    loss: float
    tokens: int
    bytes: int = 0

    @property
    def perplexity(self) -> float:
        """exp(mean NLL)."""
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float | None:
        """Total NLL in bits over the UTF-8 bytes of the predicted tokens."""
        return self.loss * self.tokens / math.log(2) / self.bytes if self.bytes else None

    def as_dict(self, prefix: str = "") -> dict[str, float | int | None]:
        """Flat dict for logs."""
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}ppl": self.perplexity,
            f"{prefix}bpb": self.bits_per_byte,
            f"{prefix}tokens": self.tokens,
        }


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    token_bytes: np.ndarray | None = None,
) -> tuple[float, int, int]:
    """(summed NLL, predicted tokens, their UTF-8 bytes) of the model over batches."""
    was_training = model.training
    model.eval()
    nll, count, nbytes = 0.0, 0, 0
    byte_table = None if token_bytes is None else torch.from_numpy(token_bytes)
    for batch in batches:
        batch = batch.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(batch.x, attention_mask=batch.attention_mask)  # (B, T, V)
        out = next_token_loss(logits, batch.y)
        nll += float(out.nll_sum)
        count += out.count
        if byte_table is not None:
            y = batch.y.cpu()
            nbytes += int(byte_table[y.clamp(min=0)][y != IGNORE_INDEX].sum())
    model.train(was_training)
    return nll, count, nbytes


def result(nll: float, count: int, nbytes: int = 0) -> EvalResult:
    """EvalResult from sums."""
    return EvalResult(nll / max(count, 1), int(count), int(nbytes))


def sliding_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, skip) per window over n tokens: inputs ids[begin:end] predict ids[begin+1:end+1], and the
    first `skip` of those targets were scored by an earlier window. Tokens 1..n-1 are each scored once."""
    out, prev_end = [], 0
    for begin in range(0, n - 1, stride):
        end = min(begin + context, n - 1)
        out.append((begin, end, max(prev_end, begin) - begin))
        prev_end = end
        if end >= n - 1:
            break
    return out


@torch.no_grad()
def sliding_window(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    context: int,
    stride: int,
    device: torch.device | str = "cpu",
    token_bytes: np.ndarray | None = None,
) -> EvalResult:
    """Perplexity of one long sequence (N,) with windows of `context` tokens moved by `stride`, each token
    past the first window seeing at least context - stride tokens of history (the Hugging Face recipe)."""
    from arlm.training.logging import Progress

    model.eval()
    nll, count, nbytes = 0.0, 0, 0
    windows = sliding_windows(ids.numel(), context, stride)
    progress = Progress(len(windows), desc="eval")
    for i, (begin, end, skip) in enumerate(windows):
        x = ids[begin:end][None].to(device)  # (1, W)
        y = ids[begin + 1 + skip : end + 1][None].to(device)  # (1, W - skip): only these need logits
        out = next_token_loss(model(x, num_logits=y.shape[1]), y)
        nll += float(out.nll_sum)
        count += out.count
        if token_bytes is not None:
            nbytes += int(token_bytes[y.cpu().numpy()].sum())
        progress.update(i + 1)
    progress.close()
    return EvalResult(nll / max(count, 1), count, nbytes)
