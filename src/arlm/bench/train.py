"""Our training step (`arlm bench train`) against Hugging Face GPT2LMHeadModel of the same shape, on the same
batches, alternating, median of repeats; prints tokens/s for each and the ratio ours / reference.

Each side computes its loss its own way (ours: the model's mean cross-entropy on (x, y); transformers: `labels=x`, which
shifts inside and so scores one position fewer per row); model, optimizer and clipping are identical."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from arlm.bench.alternate import alternate
from arlm.bench.machine import cpu_model
from arlm.config import ModelConfig, TrainConfig
from arlm.errors import optional_package
from arlm.model.transformer import Transformer
from arlm.training.loss import next_token_loss
from arlm.training.mfu import mfu, peak_flops
from arlm.training.optim import build_optimizer


@dataclass
class Side:
    """One contestant: a model, its optimizer, and its own way to get the mean loss of (inputs, targets)."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def hf_gpt2(config: ModelConfig) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel with our shape, dropout off, SDPA attention."""
    transformers = optional_package("transformers", "arlm bench train", "hf")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.ffn_dim,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        attn_implementation="sdpa",
        bos_token_id=None,  # (GPT-2's 50256 lies outside a smaller vocabulary; the step reads no special token)
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(hf_config)
    model.loss_type = "ForCausalLM"  # its default, named: left None, transformers warns that it guessed it
    return model


def train_step(side: Side, x: torch.Tensor, y: torch.Tensor, autocast: torch.autocast | None = None) -> float:
    """One optimizer step: forward + loss (each library's own), backward, clip at 1.0, AdamW, zero grads."""
    with autocast or contextlib.nullcontext():
        loss = side.loss(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(side.model.parameters(), 1.0)
    side.optimizer.step()
    side.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def make_sides(config: ModelConfig, device: torch.device | None = None, compile: bool = False) -> list[Side]:
    """Ours (the trainer's next_token_loss) and the reference (transformers' labels= loss), same shape and AdamW."""
    device = device or torch.device("cpu")
    train = TrainConfig()
    torch.manual_seed(0)
    ours = Transformer(config).to(device)
    reference = hf_gpt2(config).to(device)

    def ours_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return next_token_loss(ours(x), y).loss_sum / y.numel()  # the trainer's loss, a mean: no host sync

    def reference_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return reference(input_ids=x, labels=x).loss  # shifts labels itself: T-1 predictions a row

    if compile:  # forward and loss in one graph on both sides
        ours_loss, reference_loss = torch.compile(ours_loss), torch.compile(reference_loss)

    return [
        Side("arlm", ours, build_optimizer(ours, train, device.type), ours_loss),
        Side("transformers", reference, build_optimizer(reference, train, device.type), reference_loss),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(
    config: ModelConfig,
    batch: int,
    steps: int,
    repeats: int,
    log: Callable[[str], None] = print,
    *,
    device: torch.device | None = None,
    dtype: str = "float32",
    compile: bool = False,
) -> dict:
    """Alternate the two sides `repeats` times, `steps` steps each on identical batches; medians and ratio."""
    device = device or torch.device("cpu")
    torch.manual_seed(1)
    batches = [torch.randint(0, config.vocab_size, (batch, config.block_size + 1), device=device) for _ in range(steps)]
    sides = make_sides(config, device, compile)
    autocast = None if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))
    for side in sides:  # warm up (allocator, kernels, compilation)
        for _ in range(3 if compile else 1):
            train_step(side, batches[0][:, :-1], batches[0][:, 1:], autocast)

    def steps_timed(side: Side) -> float:
        _sync(device)
        start = time.perf_counter()
        for rows in batches:
            train_step(side, rows[:, :-1], rows[:, 1:], autocast)
        _sync(device)
        return time.perf_counter() - start

    times = alternate({side.name: partial(steps_timed, side) for side in sides}, repeats)
    tokens = steps * batch * config.block_size
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    ratio = rates["arlm"] / rates["transformers"]
    params = sum(p.numel() for p in sides[0].model.parameters())
    peak = peak_flops(device, dtype)
    flops = sides[0].model.flops_per_token(config.block_size)
    mfus = {name: mfu(rate, flops, peak) for name, rate in rates.items()}
    log(
        f"shape: {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads, context "
        f"{config.block_size}, vocabulary {config.vocab_size}, batch {batch} ({params / 1e6:.1f}M parameters)"
    )
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_model()}, {torch.get_num_threads()} threads"
    )
    log(
        f"device: {where}, {dtype}, compile {compile}, torch {torch.__version__}; "
        f"{repeats} repeats x {steps} steps, alternating"
    )
    for name, rate in rates.items():
        shown = f", MFU {mfus[name]:.1%}" if mfus[name] else ""
        log(f"  {name:<13} {rate:>10,.0f} tokens/s  (median of {repeats}){shown}")
    log(f"  ratio arlm / transformers: {ratio:.2f}x")
    return {"rates": rates, "ratio": ratio, "times": times, "mfu": mfus}
