"""Checkpoints: safetensors + JSON (never pickle), written atomically, verified on load, keep-last-N.

A checkpoint directory holds config.json, model.safetensors, tokenizer/, and for exact resume
state.safetensors (optimizer moments, RNG states) + state.json (step, counters, data position).
manifest.json, written last, lists every file with its size and SHA-256; a directory without a
matching manifest is incomplete or corrupt and is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from arlm.config import RunConfig, config_from_dict, config_to_dict
from arlm.data.tokenizers import Tokenizer, load_tokenizer
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer

MANIFEST = "manifest.json"
FORMAT = "arlm-checkpoint-1"


@dataclass
class Checkpoint:
    """A verified checkpoint directory, opened."""

    path: Path
    config: RunConfig
    meta: dict[str, Any]  # config.json's extra fields: step, tokens_seen, tokenizer fingerprint

    def model_state(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The model's weights."""
        return load_file(self.path / "model.safetensors", device=str(device))

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the model."""
        return load_tokenizer(self.path / "tokenizer")

    def train_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(state.json, state.safetensors) for exact resume."""
        if not (self.path / "state.json").exists():
            raise ArlmError(f"{self.path} holds weights only (no optimizer state); it cannot be resumed")
        state = json.loads((self.path / "state.json").read_text(encoding="utf-8"))
        return state, load_file(self.path / "state.safetensors")


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer, and the config it came with (from any model format)."""

    model: Transformer
    tokenizer: Tokenizer
    config: RunConfig
    source: str


def export_weights(state: dict[str, torch.Tensor], model_config) -> dict[str, torch.Tensor]:
    """A state dict ready for safetensors: on CPU, contiguous, the tied output matrix stored once."""
    tied = getattr(model_config, "tie_embeddings", False)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items() if not (tied and k == "lm_head.weight")}


def load_weights_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Complete a saved state dict for load_state_dict: a tied output matrix is the embedding table."""
    state = dict(state)
    if getattr(model.config, "tie_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def save_checkpoint(
    path: str | Path,
    *,
    weights: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    config: RunConfig,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
    state_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint to a temporary directory, fsync, then rename it to `path`."""
    path = Path(path)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArlmError(f"refusing to save a checkpoint: weight {name} holds NaN or Inf")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record = {"format": FORMAT, **meta, "tokenizer_fingerprint": tokenizer.fingerprint(), **config_to_dict(config)}
    (tmp / "config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    save_file(weights, tmp / "model.safetensors")
    tokenizer.save(tmp / "tokenizer")
    if state is not None:
        save_file(state_tensors or {}, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    _write_manifest(tmp)
    _fsync_dir(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _write_manifest(directory: Path) -> None:
    files = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(file, "rb") as f:
            os.fsync(f.fileno())
        files[str(file.relative_to(directory))] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
    (directory / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=2) + "\n")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_checkpoint(path: str | Path, *, hashes: bool = True) -> None:
    """Raise ArlmError unless every file the manifest lists is present with its size (and hash)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise ArlmError(f"checkpoint {path} is incomplete (no {MANIFEST}); it was not finished writing")
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        raise ArlmError(f"checkpoint {path} has a corrupt {MANIFEST}") from None
    for name, entry in files.items():
        file = path / name
        if not file.exists() or file.stat().st_size != entry["bytes"]:
            raise ArlmError(f"checkpoint {path} is truncated or damaged: {name} is missing or has the wrong size")
        if hashes and _sha256(file) != entry["sha256"]:
            raise ArlmError(f"checkpoint {path} is damaged: {name} does not match its checksum")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (complete or not)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if p.is_dir())


def latest_checkpoint(run_dir: str | Path, log=print) -> Path | None:
    """The newest checkpoint of a run that verifies; damaged newer ones are named and skipped."""
    for candidate in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(candidate)
            return candidate
        except ArlmError as exc:
            log(f"warning: {exc}; using an earlier checkpoint")
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest valid checkpoint), verified."""
    path = Path(path)
    if not path.exists():
        raise ArlmError(f"checkpoint {path} does not exist")
    if (path / "checkpoints").is_dir():  # a run folder
        found = latest_checkpoint(path)
        if found is None:
            raise ArlmError(f"run {path} has no complete checkpoint")
        return found
    try:
        verify_checkpoint(path)
    except ArlmError as exc:
        siblings = [p for p in list_checkpoints(path.parent.parent) if p != path]
        earlier = next((p for p in reversed(siblings) if _is_valid(p)), None)
        hint = f"; the newest intact checkpoint is {earlier}" if earlier else ""
        raise ArlmError(f"{exc}{hint}") from None
    return path


def _is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path, hashes=False)
        return True
    except ArlmError:
        return False


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Verify and open a checkpoint (or a run directory's newest)."""
    path = resolve_checkpoint(path)
    record = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ArlmError(f"{path} is not an arlm checkpoint (format {record.get('format')!r})")
    sections = {k: record.pop(k) for k in ("model", "data", "train", "generate") if k in record}
    try:
        config = config_from_dict(sections)
    except ArlmError as exc:
        raise ArlmError(f"{path}/config.json: {exc}") from None
    return Checkpoint(path, config, record)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete every checkpoint older than the newest `keep` complete ones, and stale temporaries.

    A checkpoint is renamed away before it is deleted, so a crash mid-deletion leaves no half directory
    under a checkpoint's name.
    """
    folder = Path(run_dir) / "checkpoints"
    complete = [p for p in list_checkpoints(run_dir) if (p / MANIFEST).exists()]
    doomed = [p for p in list_checkpoints(run_dir) if len(complete) > keep and p.name < complete[-keep].name]
    doomed += [p for p in folder.glob(".*") if p.is_dir() and not p.name.endswith(f".tmp-{os.getpid()}")]
    for old in doomed:
        trash = old.with_name(f".trash-{old.name.lstrip('.')}")
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def load_checkpoint_model(path: str | Path) -> LoadedModel:
    """Build the model of an arlm checkpoint (or a run's newest checkpoint) with its weights and tokenizer."""
    checkpoint = open_checkpoint(path)
    tokenizer = checkpoint.tokenizer()
    if tokenizer.fingerprint() != checkpoint.meta.get("tokenizer_fingerprint"):
        raise ArlmError(f"the tokenizer in {checkpoint.path} does not match the one the model was trained with")
    model = Transformer(checkpoint.config.model)
    model.load_state_dict(load_weights_dict(model, checkpoint.model_state()))
    return LoadedModel(model, tokenizer, checkpoint.config, str(checkpoint.path))
