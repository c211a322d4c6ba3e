"""Model references: an arlm checkpoint or run directory, a Hugging Face folder, a GGUF file, or 'smollm2'."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from arlm.config import RunConfig
from arlm.data.tokenizers import Tokenizer
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer
from arlm.training.checkpoint import FORMAT, MANIFEST, Checkpoint, load_weights_dict, read_checkpoint


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer, and the config it came with."""

    model: Transformer
    tokenizer: Tokenizer
    config: RunConfig
    source: str


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ArlmError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArlmError("device cuda was asked for, but no CUDA GPU is available")
    return device


def load_model(
    reference: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load any supported model reference for inference (eval mode)."""
    ref = str(reference)
    path = Path(ref)
    if ref == "smollm2" or path.suffix == ".gguf":
        from arlm.interop.gguf import load_gguf_model

        loaded = load_gguf_model(ref)
    elif path.is_dir() and _is_hf_folder(path):
        from arlm.interop.hf import load_hf_folder

        loaded = load_hf_folder(path)
    else:
        loaded = load_checkpoint_model(path)
    model = loaded.model.to(device=device, dtype=dtype) if dtype else loaded.model.to(device)
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.config, loaded.source)


def _is_hf_folder(path: Path) -> bool:
    """A folder whose config.json names a transformers model_type, and that is no arlm run or checkpoint
    (those have checkpoints/ or a manifest, and are verified whatever their config.json says)."""
    if (path / "checkpoints").is_dir() or (path / MANIFEST).exists():
        return False
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "model_type" in record and record.get("format") != FORMAT


def load_checkpoint_model(path: str | Path) -> LoadedModel:
    """Build the model of an arlm checkpoint (or a run's newest checkpoint) with its weights and tokenizer;
    a run's checkpoint pruned by its training process while being read is replaced by the newest one."""
    return read_checkpoint(path, _checkpoint_model)


def _checkpoint_model(checkpoint: Checkpoint) -> LoadedModel:
    tokenizer = checkpoint.tokenizer()
    if tokenizer.fingerprint() != checkpoint.meta.get("tokenizer_fingerprint"):
        raise ArlmError(f"the tokenizer in {checkpoint.path} does not match the one the model was trained with")
    model = Transformer(checkpoint.config.model)
    model.load_state_dict(load_weights_dict(model, checkpoint.model_state()))
    return LoadedModel(model, tokenizer, checkpoint.config, str(checkpoint.path))
