"""Loss, perplexity and bits per byte: over batches of a split, or over a long text by sliding window."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.evaluation.defaults import LOGITS_BUDGET


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
        """Total NLL in bits over the UTF-8 bytes of the predicted tokens (None where they are not known: no byte
        table, or an <unk> among them, whose bytes sum below 0)."""
        return self.loss * self.tokens / math.log(2) / self.bytes if self.bytes > 0 else None

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
        nll += float(nll_sum(logits, batch.y))
        count += int((batch.y != IGNORE_INDEX).sum())
        if byte_table is not None:
            y = batch.y.cpu()
            nbytes += int(byte_table[y.clamp(min=0)][y != IGNORE_INDEX].sum())
    model.train(was_training)
    return nll, count, nbytes


def scoring_parts(model: torch.nn.Module, batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches cut into the rows one scoring forward takes: their logits within LOGITS_BUDGET, a row at least."""
    for batch in batches:
        yield from batch.split_rows(max(1, LOGITS_BUDGET // (batch.x.shape[1] * model.config.vocab_size)))


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of targets (B, T) under logits (B, T, V), IGNORE_INDEX skipped: the
    unsmoothed loss training reports."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


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
    on_window: Callable[[int, int], None] | None = None,
    kv_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Perplexity of one long sequence (N,) with windows of `context` tokens moved by `stride`, each token
    past the first window seeing at least context - stride tokens of history (the Hugging Face recipe).
    on_window(done, total) is called after each window (a progress bar). kv_dtype: each window attends over a KV
    cache of that dtype (its keys and values as decoding over such a cache reads them), else over its own."""
    model.eval()
    nll, count, nbytes = 0.0, 0, 0
    windows = sliding_windows(ids.numel(), context, stride)
    for i, (begin, end, skip) in enumerate(windows):
        x = ids[begin:end][None].to(device)  # (1, W)
        y = ids[begin + 1 + skip : end + 1][None].to(device)  # (1, W - skip): only these need logits
        cache = None if kv_dtype is None else model.new_cache(1, x.shape[1], dtype=kv_dtype)
        nll += float(nll_sum(model(x, kv_cache=cache, num_logits=y.shape[1]), y))
        count += y.numel()
        if token_bytes is not None:
            nbytes += int(token_bytes[y.cpu().numpy()].sum())
        if on_window is not None:
            on_window(i + 1, len(windows))
    return EvalResult(nll / max(count, 1), count, nbytes)
