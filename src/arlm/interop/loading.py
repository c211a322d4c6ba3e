"""References, resolved in one place: a model or tokenizer named by an arlm checkpoint or run folder, a Hugging
Face folder, a GGUF file or 'smollm2'; the prepared corpus a run was trained on; the device to run on."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from arlm.config import RunConfig
from arlm.data import tokenizers
from arlm.data.prepare import PreparedData, load_prepared
from arlm.data.tokenizers import Tokenizer
from arlm.errors import ArlmError, optional_package
from arlm.interop.checkpoint import (
    CHECKPOINTS,
    FORMAT,
    MANIFEST,
    Checkpoint,
    LoadedModel,
    checkpoint_model,
    is_run_dir,
    read_checkpoint,
    resolve_checkpoint,
)
from arlm.interop.dtypes import DTYPE_HELP, DTYPES
from arlm.interop.gguf import gguf_model_config, load_gguf_model, load_gguf_tokenizer, read_gguf, resolve_gguf
from arlm.interop.gguf_quant import block_built, file_dtype, layers_from_gguf
from arlm.interop.hf import export_hf, load_hf_folder
from arlm.interop.lora import load_lora_checkpoint
from arlm.model import native
from arlm.model.quant import quantize_model
from arlm.model.transformer import Transformer

__all__ = [
    "DTYPES",
    "DTYPE_HELP",
    "LoadedModel",
    "Precision",
    "auto_dtype",
    "is_gguf_reference",
    "load_model",
    "load_tokenizer",
    "load_transformers_model",
    "pick_device",
    "prepared_dir",
    "resolve_dtype",
    "run_data",
    "to_dtype",
]


@dataclass(frozen=True)
class Precision:
    """What a --dtype name means: the float dtype of the weights left unquantized and the quantization, if any."""

    name: str
    float_dtype: torch.dtype
    quant: str | None = None


def pick_device(name: str = "auto", dtype: str | None = None) -> torch.device:
    """'auto' picks CUDA when present (and the dtype runs there: int4 and mixed are CPU-only), else the CPU."""
    if name == "auto":
        cuda = torch.cuda.is_available() and dtype not in ("int4", "mixed")
        return torch.device("cuda" if cuda else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ArlmError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArlmError("device cuda was asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise ArlmError(
            f"device {name} does not exist: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        )
    if device.type not in ("cpu", "cuda"):  # (mps, xpu, meta, ...: arlm runs on CPUs and CUDA GPUs)
        raise ArlmError(f"device {name!r} is not one arlm runs on; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> Precision:
    """A --dtype name (or a torch float dtype) on a device -> Precision; an impossible pair is an ArlmError."""
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    name = name or "float32"
    if name not in DTYPES:
        raise ArlmError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    device = torch.device(device)
    if name == "int4" and device.type != "cpu":
        raise ArlmError("--dtype int4 runs on the CPU only (arlm's and PyTorch's CPU kernels); use --device cpu")
    if name == "mixed" and device.type != "cpu":
        raise ArlmError("--dtype mixed runs on arlm's CPU kernels only; use --device cpu, or --dtype int8 / int4")
    if name == "mixed" and not native.available():
        why = "are turned off by ARLM_NATIVE=0" if os.environ.get("ARLM_NATIVE") == "0" else "could not be built here"
        raise ArlmError(f"--dtype mixed needs arlm's CPU kernels, which {why}; use --dtype int8 or int4")
    if name in ("int8", "int4", "mixed"):  # a GPU's int8 layers compute in bfloat16 (quant.py), a CPU's in float32
        return Precision(name, torch.float32 if device.type == "cpu" else torch.bfloat16, name)
    return Precision(name, getattr(torch, name))


def auto_dtype(reference: str | Path, device: torch.device | str = "cpu") -> str:
    """What --dtype auto means for a model on a device: a GGUF file's own precision where arlm holds its layers as
    they are (gguf_quant.file_dtype), float32 for anything else (arlm checkpoints and HF folders: what they load
    as)."""
    ref = str(reference)
    if not is_gguf_reference(ref):
        return "float32"
    contents = read_gguf(ref)
    return file_dtype(contents, gguf_model_config(contents), torch.device(device).type == "cpu")


def load_model(
    reference: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: str | torch.dtype | None = None,
    group_size: int = 32,
) -> LoadedModel:
    """Load any supported model reference for inference (eval mode) at a --dtype (float32 when None, the file's
    own where "auto": auto_dtype); a LoRA run comes merged into its base.

    int8 / int4 quantize every Linear at load (int8 per output channel; int4 per group of `group_size`), the tied head
    included (int8 for both kinds). Of a GGUF on the CPU, int4 builds the layers the file stores as Q4_0 / Q4_1 /
    Q4_K (never decoding them to float32) and its head, if Q8_0 (SmolLM2's), from their blocks, int8 every layer
    stored as Q8_0, Q5_0 or Q4_0; the others are quantized from the values the file holds. mixed (a GGUF file only)
    holds each layer at its own type (interop/gguf_quant.py; quality in docs/perf.md)."""
    ref = str(reference)
    if dtype == "auto":
        dtype = auto_dtype(ref, device)
    precision = resolve_dtype(dtype, device)  # refuse an impossible pair before reading any weights
    path = Path(ref)
    if is_gguf_reference(ref):
        contents = read_gguf(ref)  # the layers to_dtype builds from their blocks: no float32 decoded
        built = block_built(contents, gguf_model_config(contents), precision.quant)
        loaded = load_gguf_model(ref, built if torch.device(device).type == "cpu" else [])
    elif path.is_dir() and _is_hf_folder(path):
        loaded = load_hf_folder(path)
    else:
        loaded = read_checkpoint(path, _checkpoint_or_adapters)
    model = to_dtype(loaded.model, dtype, device, group_size, gguf=ref if is_gguf_reference(ref) else None)
    return LoadedModel(model, loaded.tokenizer, loaded.config, loaded.source, precision.name, loaded.data_fingerprint)


def _checkpoint_or_adapters(checkpoint: Checkpoint) -> LoadedModel:
    """A checkpoint's model: its weights, or (a LoRA checkpoint) its base model with the adapters merged."""
    if "lora_base" in checkpoint.meta:
        return load_lora_checkpoint(checkpoint, load_model)
    return checkpoint_model(checkpoint)


def to_dtype(
    model: Transformer,
    dtype: str | torch.dtype | None,
    device: torch.device | str = "cpu",
    group_size: int = 32,
    gguf: str | None = None,
) -> Transformer:
    """A float model moved to `device` at a --dtype (in place, eval mode); `gguf`: the file it was loaded from,
    whose blocks of the dtype's kind (int4: Q4_0 / Q4_1 / Q4_K and a Q8_0 / Q5_0 / Q4_0 head; int8: Q8_0, Q5_0, Q4_0;
    mixed: each layer by its own type, gguf_quant.layer_kinds) are used as they are on the CPU."""
    precision = resolve_dtype(dtype, device)
    if precision.quant == "mixed" and gguf is None:
        raise ArlmError("--dtype mixed holds a GGUF file's layers each at its own type; give a .gguf file, or use int8")
    model = model.to(device=device, dtype=precision.float_dtype)
    if precision.quant and gguf is not None and torch.device(device).type == "cpu":
        layers_from_gguf(model, gguf, precision.quant)  # the file's blocks where they are the dtype's
    if precision.quant in ("int8", "int4"):  # the other Linears, from the values the file holds
        quantize_model(model, precision.quant, group_size)
    return model.eval()


def load_tokenizer(reference: str | Path) -> Tokenizer:
    """The tokenizer of any reference: a GGUF file or 'smollm2', a run folder (its newest intact checkpoint), a
    checkpoint, a Hugging Face folder, a folder saved by arlm or a tokenizer.json."""
    ref = str(reference)
    if is_gguf_reference(ref):
        return load_gguf_tokenizer(ref)
    path = Path(ref)
    if is_run_dir(path):
        path = resolve_checkpoint(path)
    return tokenizers.load_tokenizer(path)


def is_gguf_reference(ref: str) -> bool:
    """'smollm2', a path ending in .gguf (in any case), or a file that begins with GGUF's magic bytes."""
    if ref == "smollm2" or ref.lower().endswith(".gguf"):
        return True
    try:
        with open(ref, "rb") as file:
            return file.read(4) == b"GGUF"
    except OSError:  # no such file, a folder, unreadable: no GGUF file
        return False


def _is_hf_folder(path: Path) -> bool:
    """A folder whose config.json names a transformers model_type, and that is no arlm run or checkpoint
    (those have checkpoints/ or a manifest, and are verified whatever their config.json says)."""
    if is_run_dir(path) or (path / MANIFEST).exists():
        return False
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "model_type" in record and record.get("format") != FORMAT


def prepared_dir(config: RunConfig) -> Path:
    """Where a run's prepared corpus lives: data.prepared_dir, else <train.out_dir>/data."""
    return Path(config.data.prepared_dir) if config.data.prepared_dir else Path(config.train.out_dir) / "data"


def _own_data(loaded: LoadedModel) -> Path | None:
    """The prepared data where a run a checkpoint was loaded from (RUN/checkpoints/step-N) keeps it, found from the run
    wherever it was moved or copied and whatever the current folder: RUN/data where it was given no
    data.prepared_dir, else that folder where it lies beside the run as it did in training (a sweep's OUT/LABEL runs
    and their OUT/data: ../data) -- where the saved paths, relative to the folder it trained from, would name other
    data or none."""
    checkpoint = Path(loaded.source)
    if checkpoint.parent.name != CHECKPOINTS:
        return None
    run, given, out_dir = checkpoint.parent.parent, loaded.config.data.prepared_dir, loaded.config.train.out_dir
    if not given:
        own = run / "data"
    elif out_dir and Path(given).is_absolute() == Path(out_dir).is_absolute():  # (one base: the relation holds)
        own = Path(os.path.normpath(run / os.path.relpath(given, out_dir)))
    else:
        return None
    return own if own.is_dir() else None


def run_data(
    loaded: LoadedModel, split: str, data_dir: str | Path | None = None, hint: str = "give --data DIR"
) -> PreparedData:
    """The prepared corpus a model was trained on (or `data_dir`), checked to share its tokenizer and hold `split`;
    hint: what the command takes instead, where the model has no data of its own."""
    directory = Path(data_dir) if data_dir else _own_data(loaded) or prepared_dir(loaded.config)
    if not data_dir and not directory.is_dir():  # e.g. a HF folder or GGUF file: no training data of its own here
        raise ArlmError(f"found no prepared data of {loaded.source} at {directory}; {hint}")
    data = load_prepared(directory)
    if not data_dir and loaded.data_fingerprint and data.meta.get("fingerprint") != loaded.data_fingerprint:
        raise ArlmError(  # (e.g. a sweep's shared data prepared again, with other settings, under its earlier runs)
            f"the data in {directory} were prepared with other settings than {loaded.source} was trained on "
            f"(prepared again since?); {hint} to score it on other data"
        )
    if data.tokenizer.fingerprint() != loaded.tokenizer.fingerprint():
        raise ArlmError(
            f"{loaded.source} was trained with another tokenizer than the data in {directory}; "
            "use data prepared with the model's tokenizer"
        )
    if split not in data.meta["splits"] or not data.has_split(split):
        raise ArlmError(f"the data in {directory} has no {split} split")
    return data


def load_transformers_model(reference: str) -> torch.nn.Module:
    """A model reference loaded by transformers itself (float32, eval mode): GGUF / 'smollm2', a HF folder, or an
    arlm checkpoint (exported to a temporary HF folder first)."""
    AutoModelForCausalLM = optional_package("transformers", "comparing with transformers", "hf").AutoModelForCausalLM
    path = Path(reference)
    if is_gguf_reference(reference):
        file = resolve_gguf(reference)
        return AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()
    if path.is_dir() and _is_hf_folder(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_hf(reference, Path(tmp) / "hf", load=load_model)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
