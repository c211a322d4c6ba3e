"""transformers as an independent reference: the same model loaded by transformers, scored on the same windows."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from arlm.errors import ArlmError
from arlm.evaluation.perplexity import EvalResult, sliding_windows


def transformers_model(ref: str) -> torch.nn.Module:
    """A model reference loaded by transformers itself (float32): GGUF / 'smollm2', a HF folder, or an arlm
    checkpoint (exported to a temporary HF folder first)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ArlmError("comparing with transformers needs it installed: pip install 'arlm[hf]'") from None
    path = Path(ref)
    if ref == "smollm2" or path.suffix == ".gguf":
        from arlm.interop.gguf import resolve_gguf

        file = resolve_gguf(ref)
        return AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()
    if (
        (path / "config.json").exists()
        and not (path / "manifest.json").exists()
        and not (path / "checkpoints").exists()
    ):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from arlm.interop.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        folder = export_hf(ref, Path(tmp) / "hf")
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


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
