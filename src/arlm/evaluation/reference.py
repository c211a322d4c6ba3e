"""transformers as an independent reference: a model loaded by transformers itself
(arlm.interop.loading.load_transformers_model), scored on the same windows as arlm's sliding_window."""

from __future__ import annotations

import torch

from arlm.evaluation.perplexity import EvalResult, sliding_windows


@torch.no_grad()
def transformers_sliding_window(model: torch.nn.Module, ids: torch.Tensor, *, context: int, stride: int) -> EvalResult:
    """Mean NLL of a transformers model over exactly the windows arlm's sliding_window scores."""
    total, count = 0.0, 0
    for begin, end, skip in sliding_windows(ids.numel(), context, stride):
        logits = model(ids[begin:end][None]).logits[0, skip:]  # (scored, V)
        targets = ids[begin + 1 + skip : end + 1]
        total += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
        count += targets.numel()
    return EvalResult(total / max(count, 1), count)
