"""What context buys: validation loss as a function of the position in the context (how much a token gains from
the tokens before it), for one or several runs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.evaluation.perplexity import scoring_parts


@torch.no_grad()
def per_position_loss(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """(mean NLL, token count) at each position 0..T-1 of the context, over the batches."""
    total = count = None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for part in scoring_parts(model, batches):
        part = part.to(device)
        logits = model(part.x, attention_mask=part.attention_mask)  # (b, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), part.y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(part.y.shape)
        keep = (part.y != IGNORE_INDEX).double()  # (b, T)
        sums, counts = (nll.double() * keep).sum(0), keep.sum(0)  # (T,) each
        total = sums if total is None else total + sums
        count = counts if count is None else count + counts
    model.train(was_training)  # (as the other scoring functions leave it)
    return (total / count.clamp(min=1)).cpu().numpy(), count.cpu().numpy()
