"""What context buys: validation loss as a function of the position in the context (how much a token gains from
the tokens before it), for one or several runs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.data.prepare import load_prepared
from arlm.loading import load_model


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


def context_command(
    run_refs: list[str], *, split: str = "val", batches: int = 0, out: str = "context.png", log=print
) -> dict[str, list[float]]:
    """Loss by position for each run (on the split of its own prepared data), one PNG and a JSON."""
    from arlm.plots import plot_lines

    curves = {}
    for ref in run_refs:
        loaded = load_model(ref)
        config = loaded.config
        data_dir = Path(config.data.prepared_dir) if config.data.prepared_dir else Path(config.train.out_dir) / "data"
        sampler = load_prepared(data_dir).sampler(split, config.data, config.model.block_size, config.train.seed)
        loss, _ = per_position_loss(loaded.model, sampler.eval_batches(config.train.batch_size, batches))
        label = Path(ref).name
        curves[label] = loss.tolist()
        marks = [p for p in (0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023) if p < len(loss)]
        shown = ", ".join(f"pos {p}: {loss[p]:.3f}" for p in marks)
        log(f"{label} (context {len(loss)}): {shown}; mean {loss.mean():.3f}")
    series = {label: [(i + 1, v) for i, v in enumerate(c)] for label, c in curves.items()}
    plot_lines(
        series,
        out,
        xlabel="position in the context (tokens seen + 1)",
        ylabel=f"{split} loss",
        title="loss by position in the context",
        logx=True,
    )
    Path(out).with_suffix(".json").write_text(json.dumps(curves) + "\n")
    log(f"wrote {out}")
    return curves
