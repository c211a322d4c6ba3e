"""Checkpoints: safetensors + JSON (never pickle), written atomically, verified on load, keep-last-N.

A checkpoint directory holds config.json, model.safetensors, tokenizer/, and for exact resume
state.safetensors (optimizer moments, RNG states) + state.json (step, counters, data position).
manifest.json, written last, lists every file with its size and SHA-256; a directory without a
matching manifest is incomplete or corrupt and is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from arlm.config import ModelConfig, RunConfig, config_from_dict, config_to_dict
from arlm.data.tokenizers import Tokenizer, load_tokenizer
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer
from arlm.temporaries import MARK, temporary_for

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"  # a run folder's folder of checkpoints
FORMAT = "arlm-checkpoint-1"
REQUIRED_FILES = ("config.json", "model.safetensors")
STEP_NAME = re.compile(r"step-(\d+)", re.ASCII)  # what training names a checkpoint (step-%08d)
READ_ATTEMPTS = 20  # a reader retries this often when a training process prunes the checkpoint it reads
T = TypeVar("T")


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
    """A model ready for inference, its tokenizer, the config it came with (from any model format), and the --dtype
    it was loaded at ("auto" resolved)."""

    model: Transformer
    tokenizer: Tokenizer
    config: RunConfig
    source: str
    dtype: str = "float32"
    data_fingerprint: str | None = None  # a checkpoint's: the settings of the data it was trained on


def export_weights(state: dict[str, torch.Tensor], model_config: ModelConfig) -> dict[str, torch.Tensor]:
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
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint to a temporary directory, fsync, then rename it to `path`; extra_files ({relative
    name: bytes}, e.g. the PEFT layout of adapters) are written with it and listed in its manifest."""
    path = Path(path)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArlmError(f"refusing to save a checkpoint: weight {name} holds NaN or Inf")
    tmp = temporary_for(path, hidden=True)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        record = {"format": FORMAT, **meta, "tokenizer_fingerprint": tokenizer.fingerprint(), **config_to_dict(config)}
        (tmp / "config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        save_tensors(weights, tmp / "model.safetensors")
        tokenizer.save(tmp / "tokenizer")
        if state is not None:
            save_tensors(state_tensors or {}, tmp / "state.safetensors")
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        for name, data in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        _write_manifest(tmp)
        _fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written temporary is left behind
        if is_io_error(exc):
            reason = _reason(exc)
            raise ArlmError(f"could not write checkpoint {path}: {reason}; earlier checkpoints are intact") from None
        raise
    return path


def is_io_error(exc: BaseException) -> bool:
    """An operating-system failure to read or write (also as safetensors' and tokenizers' own exceptions)."""
    return isinstance(exc, (OSError, SafetensorError)) or (type(exc) is Exception and "os error" in str(exc))


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed read or write (safetensors and tokenizers wrap them in their own)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    found = re.search(r'message: "([^"]+)"', str(exc)) or re.search(r"^(.*?) \(os error \d+\)", str(exc))
    return found.group(1) if found else str(exc)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, the file readable as the umask allows, as every other file written (save_file leaves
    it to its owner alone: 0600, so a shared export or run could not be read by another account)."""
    save_file(tensors, path, metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


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
    for name, entry in _manifest_files(path).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise ArlmError(f"checkpoint {path} is truncated or damaged: {name} is missing or has the wrong size")
        if hashes and _sha256(file) != entry["sha256"]:
            raise ArlmError(f"checkpoint {path} is damaged: {name} does not match its checksum")


def foreign_files(path: str | Path) -> list[str]:
    """Files in a checkpoint folder that its manifest does not list (a user's, which replacing it would delete)."""
    path = Path(path)
    listed = set(_manifest_files(path)) | {MANIFEST}
    return sorted(
        str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and str(f.relative_to(path)) not in listed
    )


def _manifest_files(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's {file: {bytes, sha256}}, refused unless it has that shape and lists the weights."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArlmError(f"checkpoint {path} is incomplete (no {MANIFEST}); it was not finished writing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not (
        isinstance(files, dict)
        and all(name in files for name in REQUIRED_FILES)
        and all(_manifest_entry_ok(name, entry) for name, entry in files.items())
    ):
        raise ArlmError(f"checkpoint {path} has a corrupt {MANIFEST}")
    return files


def _manifest_entry_ok(name: str, entry: Any) -> bool:
    parts = Path(name).parts
    return (
        isinstance(entry, dict)
        and type(entry.get("bytes")) is int
        and isinstance(entry.get("sha256"), str)
        and bool(parts)
        and not Path(name).is_absolute()
        and ".." not in parts
    )


def is_run_dir(path: str | Path) -> bool:
    """Whether path is a run folder (it holds checkpoints/, what training writes; a checkpoint does not)."""
    return (Path(path) / CHECKPOINTS).is_dir()


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where training writes the checkpoint of `step` in a run folder: RUN/checkpoints/step-NNNNNNNN."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run (step-N: what training names them), oldest first (complete or not); a
    folder of another name (step-mine) is no checkpoint."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = {p: int(m[1]) for p in folder.glob("step-*") if p.is_dir() and (m := STEP_NAME.fullmatch(p.name))}
    return sorted(steps, key=steps.__getitem__)


def to_stderr(line: str) -> None:
    """Print a warning on stderr, out of the text or results a command writes on stdout."""
    print(line, file=sys.stderr)


def latest_checkpoint(
    run_dir: str | Path, log: Callable[[str], None] = to_stderr, *, hashes: bool = True
) -> Path | None:
    """The newest checkpoint of a run that verifies; damaged newer ones are named (on stderr unless `log` is given)
    and skipped (one that vanished meanwhile, pruned by a training process, silently)."""
    for candidate in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(candidate, hashes=hashes)
            return candidate
        except ArlmError as exc:
            if candidate.exists():
                log(f"warning: {exc}; using an earlier checkpoint")
    return None


def resolve_checkpoint(path: str | Path, *, hashes: bool = True) -> Path:
    """A checkpoint directory, or a run directory (its newest valid checkpoint), verified."""
    path = Path(path)
    if not path.exists():
        raise ArlmError(f"checkpoint {path} does not exist")
    if is_run_dir(path):
        found = latest_checkpoint(path, hashes=hashes)
        if found is None:
            raise ArlmError(f"run {path} has no complete checkpoint")
        return found
    if not is_run_or_checkpoint(path):
        raise ArlmError(f"{path} is not an arlm run or checkpoint")
    try:
        verify_checkpoint(path, hashes=hashes)
    except ArlmError as exc:
        siblings = [p for p in list_checkpoints(path.parent.parent) if p != path]
        earlier = next((p for p in reversed(siblings) if _is_valid(p)), None)
        hint = f"; the newest intact checkpoint is {earlier}" if earlier else ""
        raise ArlmError(f"{exc}{hint}") from None
    return path


def input_paths(reference: str | Path) -> list[Path]:
    """The paths a model reference reads, resolved: the reference, its run folder (a checkpoint's too) and, for
    a LoRA checkpoint, those of its base model (train.init); a name such as 'smollm2' reads none here."""
    path = Path(reference).resolve()
    if not path.exists():
        return []
    run = path.parent.parent if path.parent.name == CHECKPOINTS else path
    paths = [path] if run == path else [path, run]
    try:
        base = read_record(resolve_checkpoint(path, hashes=False)).get("lora_base")
    except (ArlmError, OSError, ValueError):
        return paths  # not an arlm checkpoint (a HF folder, a .gguf) or a damaged one, which loading refuses
    if isinstance(base, dict) and isinstance(base.get("reference"), str) and Path(base["reference"]) != path:
        paths += input_paths(base["reference"])
    return paths


def check_output_apart(out: str | Path, reference: str | Path) -> None:
    """Refuse an output that is, lies inside or holds a path the model reference reads (input_paths), so that
    writing it (with --overwrite) cannot destroy the model, its run or a LoRA run's base."""
    target, paths = Path(out).resolve(), input_paths(reference)
    if paths and target == paths[0]:  # paths[0]: the reference itself, resolved
        raise ArlmError(f"{out} is {reference} itself; choose an output outside it")
    for path in paths:
        where = "is" if target == path else "lies inside" if path in target.parents else "holds"
        if where != "holds" or target in path.parents:
            raise ArlmError(f"{out} {where} {path}, which {reference} reads; choose an output outside it")


def is_run_or_checkpoint(path: str | Path) -> bool:
    """Whether path is an arlm run folder or checkpoint (finished or not): not a file, an HF folder, ..."""
    path = Path(path)
    if not path.is_dir():
        return False
    if is_run_dir(path) or (path / MANIFEST).exists() or STEP_NAME.fullmatch(path.name):
        return True
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):  # no config.json, not JSON, not an object
        return False


def _is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path, hashes=False)
        return True
    except ArlmError:
        return False


def open_checkpoint(path: str | Path, *, hashes: bool = True) -> Checkpoint:
    """Verify and open a checkpoint (or a run directory's newest); hashes=False checks sizes only, for a
    checkpoint this process has already verified."""
    path = resolve_checkpoint(path, hashes=hashes)
    record = read_record(path)
    sections = {k: record.pop(k) for k in ("model", "data", "train", "generate") if k in record}
    try:
        config = config_from_dict(sections)
    except ArlmError as exc:
        raise ArlmError(f"{path}/config.json: {exc}") from None
    return Checkpoint(path, config, record)


def read_record(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json, refused unless it is an arlm checkpoint record."""
    try:
        record = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArlmError(f"{path}/config.json is not valid JSON") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ArlmError(f"{path} is not an arlm checkpoint (config.json format {found!r})")
    return record


def read_checkpoint(path: str | Path, read: Callable[[Checkpoint], T], *, attempts: int = READ_ATTEMPTS) -> T:
    """open_checkpoint(path), then read(checkpoint); when a training process prunes the checkpoint in
    between (a run folder given), try again with the run's newest intact one, at most `attempts` times."""
    path = Path(path)
    if not path.exists():
        raise ArlmError(f"checkpoint {path} does not exist")
    is_run = is_run_dir(path)
    for attempt in itertools.count(1):
        before = list_checkpoints(path) if is_run else []
        try:
            return read(open_checkpoint(path))
        except (ArlmError, OSError, SafetensorError, RuntimeError) as exc:  # safetensors: file gone -> RuntimeError
            if is_run and attempt < attempts and list_checkpoints(path) != before:
                continue  # the run's checkpoints changed while we read: look again
            if type(exc) is RuntimeError:
                raise  # not a file that went away: a real error, shown as it is
            raise _read_error(path, exc) from None


def _read_error(path: Path, exc: Exception) -> ArlmError:
    if not path.exists():
        return ArlmError(f"checkpoint {path} was deleted while it was being read")
    return exc if isinstance(exc, ArlmError) else ArlmError(f"cannot read checkpoint {path}: {_reason(exc)}")


def prune_checkpoints(run_dir: str | Path, keep: int, *, data_fingerprint: str | None = None) -> list[Path]:
    """Delete the checkpoints of this run older than its newest `keep` intact ones, and stale temporaries;
    returns the step-* folders left alone because they are not intact checkpoints of this run.

    A checkpoint counts when its manifest has the right shape, every file has its listed size, and its
    config.json is an arlm record of the step in its name (and of `data_fingerprint`, when given). Nothing
    else is deleted or counted, so the newest intact checkpoint always stays. A checkpoint is renamed away
    before it is deleted, so a crash mid-deletion leaves no half directory under a checkpoint's name.
    """
    folder = Path(run_dir) / CHECKPOINTS
    ours, strays = [], []
    for path in list_checkpoints(run_dir):
        (ours if _is_ours(path, data_fingerprint) else strays).append(path)
    doomed = ours[: max(len(ours) - keep, 0)]
    mine = f"{MARK}{os.getpid()}"
    for hidden in (p for p in folder.glob(".*") if p.is_dir()):
        if hidden.name.startswith(".trash-") or (MARK in hidden.name and not hidden.name.endswith(mine)):
            doomed.append(hidden)  # left by a process that died while writing or deleting
    for old in doomed:
        trash = old if old.name.startswith(".trash-") else old.with_name(f".trash-{old.name.lstrip('.')}")
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return strays


def _is_ours(path: Path, data_fingerprint: str | None) -> bool:
    """Whether a step-* folder is an intact checkpoint (sizes checked, not hashes) of this run."""
    name = STEP_NAME.fullmatch(path.name)
    try:
        verify_checkpoint(path, hashes=False)
        record = read_record(path)
    except (ArlmError, OSError):
        return False
    same_data = data_fingerprint is None or record.get("data_fingerprint") == data_fingerprint
    return name is not None and record.get("step") == int(name.group(1)) and same_data


def load_checkpoint_model(path: str | Path) -> LoadedModel:
    """Build the model of an arlm checkpoint (or a run's newest checkpoint) with its weights and tokenizer;
    a run's checkpoint pruned by its training process while being read is replaced by the newest one."""
    return read_checkpoint(path, checkpoint_model)


def checkpoint_model(checkpoint: Checkpoint) -> LoadedModel:
    """The model of an opened checkpoint that holds all its weights (not a LoRA checkpoint: see interop.lora)."""
    if "lora_base" in checkpoint.meta:
        raise ArlmError(f"{checkpoint.path} holds LoRA adapters only; load it with arlm.interop.loading.load_model")
    tokenizer = checkpoint.tokenizer()
    if tokenizer.fingerprint() != checkpoint.meta.get("tokenizer_fingerprint"):
        raise ArlmError(f"the tokenizer in {checkpoint.path} does not match the one the model was trained with")
    model = Transformer.from_weights(checkpoint.config.model, checkpoint.model_state())
    fingerprint = checkpoint.meta.get("data_fingerprint")
    return LoadedModel(model, tokenizer, checkpoint.config, str(checkpoint.path), data_fingerprint=fingerprint)
