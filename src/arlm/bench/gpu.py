"""The figures of `arlm bench gpu` (run by `bash benchmarks/gpu.sh`): a GPT-2-124M-shaped training step (bf16,
compiled) against transformers' GPT2LMHeadModel with MFU, and batch-1 greedy decoding of a SmolLM2-135M-shaped
Llama (bf16, compiled step with CUDA graphs) against transformers' generate(). Smoke mode runs the same code on
tiny shapes on the CPU, so the test suite keeps the script from rotting."""

from __future__ import annotations

import json
import platform
import traceback
from pathlib import Path

import torch

from arlm.bench.decode import SMOLLM2_SHAPE, run_decode_bench
from arlm.bench.train import run_bench
from arlm.config import ModelConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.model.transformer import Transformer

GPT2_124M = dict(flavour="gpt2", n_layer=12, n_head=12, d_model=768, block_size=1024, vocab_size=50304, bias=True)
SMOKE_TRAIN = dict(flavour="gpt2", n_layer=2, n_head=2, d_model=64, block_size=64, vocab_size=512, bias=True)
SMOKE_DECODE = dict(
    flavour="llama", n_layer=2, n_head=3, n_kv_head=1, d_model=48, block_size=256, vocab_size=512, tie_embeddings=True
)


def environment(device: torch.device) -> dict:
    """The device's name and the torch and CUDA versions."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}


def train_figures(device: torch.device, smoke: bool, batch: int, log=print) -> dict:
    """Tokens/s and MFU of ours and of transformers on the 124M shape (OOM: the batch is halved)."""
    config = ModelConfig(**(SMOKE_TRAIN if smoke else GPT2_124M))
    dtype, compile = ("float32", False) if smoke else ("bfloat16", True)
    steps, repeats = (2, 1) if smoke else (10, 3)
    while True:
        try:
            return {
                "batch": batch,
                **run_bench(config, batch, steps, repeats, log, device=device, dtype=dtype, compile=compile),
            }
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            log(f"out of memory: retrying with batch {batch}")


def decode_figures(device: torch.device, smoke: bool, log=print) -> dict:
    """Batch-1 greedy tokens/s of ours (compiled step; and eager) and of transformers' generate(), random weights."""
    config = ModelConfig(**(SMOKE_DECODE if smoke else SMOLLM2_SHAPE))
    tokenizer = VocabTokenizer.train("char", ["abc"], 0)
    dtype = torch.float32 if smoke else torch.bfloat16
    figures = {}
    for compile in (True, False):
        log(f"-- arlm {'compiled step (CUDA graphs on GPU)' if compile else 'eager'} --")
        torch.manual_seed(0)  # the same weights for both passes (the bench re-lays out a CPU model's linears)
        model = Transformer(config).eval().to(device)
        figures["compiled" if compile else "eager"] = run_decode_bench(
            model,
            tokenizer,
            new_tokens=16 if smoke else 256,
            repeats=1 if smoke else 3,
            log=log,
            cases=["greedy, batch 1"],
            dtype=dtype,
            compile=compile,
        )
    return figures


def run_section(results: dict, name: str, out: Path, fn) -> None:
    """Run one benchmark; a failure is recorded (and printed) without stopping the others; write results.json."""
    try:
        results[name] = fn()
    except Exception as error:  # a benchmark run reports every section it can
        traceback.print_exc()
        results[name] = {"error": f"{type(error).__name__}: {error}"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
