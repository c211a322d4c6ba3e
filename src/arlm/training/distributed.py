"""Distribution applied from outside the model: process group, DDP or FSDP2, and consolidated state."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from arlm.config import TrainConfig
from arlm.errors import ArlmError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, number of processes, local device index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.rank == 0


def check_processes(tc: TrainConfig, info: DistInfo) -> None:
    """Refuse settings the processes cannot share: a global batch they do not divide, per-layer gradient norms of
    FSDP's shards."""
    if tc.grad_accum % info.world_size:
        raise ArlmError(
            f"train.grad_accum ({tc.grad_accum}) must be a multiple of the {info.world_size} processes; "
            "the global batch is batch_size x grad_accum rows"
        )
    if tc.grad_norms and info.enabled and tc.parallel == "fsdp":
        raise ArlmError(  # (each process holds a shard of every gradient)
            "train.grad_norms under FSDP would log each process's shard of the gradients; use train.parallel ddp"
        )


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a torchrun worker at once, skipping interpreter teardown (a no-op outside torchrun).

    Once its process group is destroyed, a gloo worker's teardown of its native threads (rarely, about one
    run in a few hundred on 2 busy cores) aborts with "terminate called without an active exception",
    which torchrun reports as a failed run although every file was written. Files are closed by then; the
    standard streams are flushed here.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier(info: DistInfo) -> None:
    """Wait for every process."""
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum numbers across processes (float64)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def wrap_model(model: nn.Module, config: TrainConfig, info: DistInfo, device: torch.device) -> nn.Module:
    """Activation checkpointing, then DDP or FSDP2 (fully_shard per block, then the root)."""
    if config.activation_checkpointing:
        apply_activation_checkpointing(model, check_fn=lambda m: type(m).__name__ == "Block")
    if not info.enabled:
        return model
    if config.parallel == "fsdp":
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    ids = [info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def parameter_names(model: nn.Module) -> dict[nn.Parameter, str]:
    """Each parameter's state-dict name, without the prefixes wrappers add (activation checkpointing, compile)."""
    names = {}
    for name, param in unwrap(model).named_parameters():
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        names[param] = name
    return names


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def sync_context(
    model: nn.Module, sync: bool, config: TrainConfig, info: DistInfo
) -> contextlib.AbstractContextManager[None]:
    """Skip gradient synchronization on all but the last micro-step of an accumulation."""
    if not info.enabled:
        return contextlib.nullcontext()
    if config.parallel == "fsdp":
        unwrap(model).set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else model.no_sync()


def full_model_state(model: nn.Module, config: TrainConfig, info: DistInfo) -> dict[str, torch.Tensor]:
    """Consolidated (unsharded) weights on CPU; every process must call it under FSDP."""
    if info.enabled and config.parallel == "fsdp":
        return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict()


def load_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], config: TrainConfig, info: DistInfo, strict: bool = True
) -> None:
    """Load consolidated weights into a (possibly sharded) model; every process reads the same file. Not strict:
    only the weights given (a LoRA checkpoint's adapters)."""
    if info.enabled and config.parallel == "fsdp":
        set_model_state_dict(unwrap(model), state, options=StateDictOptions(full_state_dict=True, strict=strict))
        return
    unwrap(model).load_state_dict(state, strict=strict)


def full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, info: DistInfo
) -> dict[str, torch.Tensor]:
    """Optimizer moments keyed 'optim.<parameter name>.<key>', consolidated on CPU."""
    if info.enabled and config.parallel == "fsdp":
        full = get_optimizer_state_dict(
            unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {f"optim.{name}.{k}": v for name, st in full.get("state", {}).items() for k, v in st.items()}
    names = parameter_names(model)
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                out[f"optim.{names[p]}.{key}"] = value.detach().to("cpu").clone()
    return out


def load_optimizer_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    config: TrainConfig,
    info: DistInfo,
) -> None:
    """Inverse of full_optimizer_state (each process reads the consolidated file)."""
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, _, field = key[len("optim.") :].rpartition(".")
            per_param.setdefault(name, {})[field] = value
    if info.enabled and config.parallel == "fsdp":
        names = parameter_names(model)
        groups = [
            {k: v for k, v in g.items() if k != "params"} | {"params": [names[p] for p in g["params"]]}
            for g in optimizer.param_groups
        ]
        set_optimizer_state_dict(
            unwrap(model),
            optimizer,
            {"state": per_param, "param_groups": groups},
            options=StateDictOptions(full_state_dict=True),
        )
        return
    names = parameter_names(model)
    current = optimizer.state_dict()  # parameters are numbered in param_groups order
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    unknown = sorted(set(per_param) - {names[p] for p in ordered})
    if unknown:
        raise ArlmError(f"the checkpoint's optimizer state names {unknown[0]}, which this model lacks")
    current["state"] = {i: per_param[names[p]] for i, p in enumerate(ordered) if names[p] in per_param}
    optimizer.load_state_dict(current)  # applies the device/dtype policy (e.g. 'step' for fused AdamW)
