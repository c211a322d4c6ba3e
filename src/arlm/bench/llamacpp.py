"""llama.cpp beside arlm: llama-bench's token generation on the GGUF file of the same precision, alternating with
arlm's greedy batch-1 decoding, medians. `benchmarks/llamacpp.sh` builds llama-bench and writes the files
(smollm2-F32/BF16/Q8_0/Q4_1.gguf) into one folder; this module only runs what is there."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from arlm.bench.alternate import alternate
from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.errors import ArlmError

# arlm's dtype -> the GGUF type llama.cpp runs at the same precision
LLAMACPP_TYPES = {"float32": "F32", "bfloat16": "BF16", "int8": "Q8_0", "int4": "Q4_1"}
DEFAULT_FOLDER = Path.home() / ".cache" / "arlm" / "llamacpp"


def llamacpp_folder() -> Path:
    """The folder benchmarks/llamacpp.sh fills: $LLAMACPP_CACHE, else ~/.cache/arlm/llamacpp."""
    return Path(os.environ.get("LLAMACPP_CACHE", DEFAULT_FOLDER))


def find_llama_bench(folder: Path) -> Path | None:
    """llama-bench under `folder` (the build benchmarks/llamacpp.sh makes there), or None."""
    for found in sorted(folder.glob("**/bin/llama-bench")):
        if os.access(found, os.X_OK):
            return found
    return None


def gguf_for(folder: Path, dtype: str) -> Path:
    """The SmolLM2 GGUF file at `dtype`'s precision in `folder`; one line saying how to make it if missing."""
    if dtype not in LLAMACPP_TYPES:
        raise ArlmError(f"llama.cpp has no file for --dtype {dtype}; choose one of {', '.join(LLAMACPP_TYPES)}")
    path = folder / f"smollm2-{LLAMACPP_TYPES[dtype]}.gguf"
    if not path.exists():
        raise ArlmError(f"{path} is missing; make it with: LLAMACPP_CACHE={folder} bash benchmarks/llamacpp.sh")
    return path


def llama_bench_rate(
    binary: Path, gguf: Path, *, threads: int, new_tokens: int, depth: int = 0, prompt_tokens: int = 0
) -> float:
    """Tokens/s of one llama-bench run on `gguf`: token generation (-p 0 -n new_tokens -r 1) after `depth` tokens of
    context (-d; its cache in f16, llama-bench's default), or with prompt_tokens a prompt's processing (-p P -n 0)."""
    sizes = ["-p", str(prompt_tokens), "-n", str(0 if prompt_tokens else new_tokens)]
    command = [str(binary), "-m", str(gguf), "-t", str(threads), *sizes, "-r", "1"]
    command += ["-d", str(depth)] if depth else []
    done = subprocess.run([*command, "-o", "jsonl"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArlmError(f"llama-bench failed on {gguf.name} (exit {done.returncode}): {last}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise ArlmError(f"llama-bench printed no result for {gguf.name}")
    return float(rows[-1]["avg_ts"])


def arlm_greedy_rate(model: torch.nn.Module, bos: int, new_tokens: int) -> float:
    """Tokens/s of arlm's greedy batch-1 decoding from a one-token prompt, as llama-bench's -p 0 starts empty."""
    config = GenerationConfig(strategy="greedy", max_new_tokens=new_tokens, stop_at_eos=False)
    start = time.perf_counter()
    out = generate(model, [[bos]], config)
    return out.stats["new_tokens"] / (time.perf_counter() - start)


def compare_with_llamacpp(
    model: torch.nn.Module, bos: int, binary: Path, gguf: Path, *, new_tokens: int = 64, repeats: int = 5
) -> dict[str, float]:
    """arlm greedy batch 1 and llama-bench on `gguf`, alternating which goes first; medians, arlm / llama.cpp, and the
    lowest and highest of the rounds' own ratios (how far one round's reading strays on this machine)."""
    threads = torch.get_num_threads()
    arlm_greedy_rate(model, bos, 4)  # warm-up
    sides = {
        "arlm": lambda: arlm_greedy_rate(model, bos, new_tokens),
        "llama.cpp": lambda: llama_bench_rate(binary, gguf, threads=threads, new_tokens=new_tokens),
    }
    rates = alternate(sides, repeats)
    medians = {side: statistics.median(values) for side, values in rates.items()}
    rounds = [ours / theirs for ours, theirs in zip(rates["arlm"], rates["llama.cpp"])]
    ratio = medians["arlm"] / medians["llama.cpp"]
    return {**medians, "ratio": ratio, "ratio_range": (min(rounds), max(rounds)), "threads": threads}
