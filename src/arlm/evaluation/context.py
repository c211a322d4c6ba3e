"""What context buys: validation loss as a function of the position in the context (how much a token gains from
the tokens before it), for one or several runs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from arlm.data.batches import IGNORE_INDEX, Batch


@torch.no_grad()
def per_position_loss(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """(mean NLL, token count) at each position 0..T-1 of the context, over the batches."""
    total = count = None
    model.eval()
    for batch in batches:
        logits = model(batch.x, attention_mask=batch.attention_mask)  # (B, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), batch.y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(batch.y.shape)
        keep = (batch.y != IGNORE_INDEX).double()  # (B, T)
        sums, counts = (nll.double() * keep).sum(0), keep.sum(0)  # (T,) each
        total = sums if total is None else total + sums
        count = counts if count is None else count + counts
    return (total / count.clamp(min=1)).numpy(), count.numpy()
