"""Helpers shared by tests: tiny corpora and configs, and a runner for the CLI in a subprocess."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from arlm.config import RunConfig, config_from_dict
from arlm.data.sources import DATA_ENV, local_corpus
from arlm.decoding.generate import generate

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true")


def optional_module(name: str):
    """An optional package the tests of a module need: skipped without it, but in CI (where `make test` installs
    every extra) a missing one fails, as tests/conftest.py has it for transformers and the SmolLM2 file."""
    import importlib

    import pytest

    return importlib.import_module(name) if IN_CI else pytest.importorskip(name)


SHAKESPEARE_PLACES = (
    str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"),  # beside the checkout, as on the dev box
    "/work/shared/data/tinyshakespeare.txt",  # the shared folder itself, for clones made elsewhere
)


def shakespeare() -> Path:
    """The tinyshakespeare file (never copied into the repo, never downloaded by a test): $ARLM_DATA or the
    cache folder as `arlm` finds it, else the shared folder; skips the test where this machine has none."""
    import pytest

    found = local_corpus("tinyshakespeare")
    if found is not None:
        return found
    for place in SHAKESPEARE_PLACES:
        if Path(place).is_file():
            return Path(place)
    pytest.skip(f"tinyshakespeare.txt not found (set {DATA_ENV} to a folder holding it)")


def tiny_text(n_docs: int = 40, start: int = 0) -> list[str]:
    """Deterministic English documents from Python's own documentation (no files needed)."""
    from pydoc_data.topics import topics

    names = sorted(topics)[start : start + n_docs]
    return [topics[name][:1500] for name in names]


def write_corpus(folder: Path, n_docs: int = 40) -> Path:
    """A folder of small text files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(tiny_text(n_docs)):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


def tiny_raw(tmp_path: Path, source: str | Path, **sections) -> dict:
    """The nested dict of a run config small enough to train in a second or two."""
    raw = {
        "model": {"flavour": "llama", "block_size": 32, "n_layer": 2, "n_head": 2, "d_model": 32},
        "data": {"source": str(source), "tokenizer": "char", "val_fraction": 0.1, "test_fraction": 0.1},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "batch_size": 4,
            "max_steps": 20,
            "lr": 3e-3,
            "warmup_steps": 2,
            "eval_interval": 10,
            "eval_batches": 2,
            "final_eval_batches": 4,
            "checkpoint_interval": 10,
            "log_interval": 5,
            "sample_tokens": 0,
        },
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def tiny_config(tmp_path: Path, source: str | Path, **sections) -> RunConfig:
    """A validated tiny RunConfig."""
    return config_from_dict(tiny_raw(tmp_path, source, **sections)).validate()


def write_yaml(path: Path, raw: dict) -> Path:
    """Write a preset file."""
    import yaml

    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m arlm ARGS` and capture its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "arlm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_train(preset: Path, out_dir: Path, *extra: str) -> subprocess.Popen:
    """Start `arlm train --preset PRESET --train.out_dir OUT_DIR EXTRA` as its own process (stderr piped)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "arlm", "train", "--preset", str(preset), "--train.out_dir", str(out_dir), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 120) -> bool:
    """Poll until condition() holds (False if the process ended or the bounded wait ran out first)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.02)
    return False


def kill(proc: subprocess.Popen) -> str:
    """SIGKILL the process if it still runs, reap it, and return what it wrote on stderr."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.stderr.read() if proc.stderr else ""


def chi_square_pvalue(observed, expected_probs) -> float:
    """Pearson chi-square goodness-of-fit p-value (cells with expected count < 5 are pooled into one)."""

    n = float(sum(observed))
    pairs = sorted(zip((n * float(p) for p in expected_probs), (float(o) for o in observed)))
    cells, pool_e, pool_o = [], 0.0, 0.0
    for e, o in pairs:
        if e < 5:
            pool_e, pool_o = pool_e + e, pool_o + o
        else:
            cells.append((e, o))
    if pool_e > 0:
        cells.append((pool_e, pool_o))
    if len(cells) < 2:
        return 1.0
    stat = sum((o - e) ** 2 / e for e, o in cells)
    return _gamma_q((len(cells) - 1) / 2.0, stat / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (series below a+1, continued fraction above)."""
    import math

    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        k = a
        while abs(term) > abs(total) * 1e-15:
            k += 1
            term *= x / k
            total += term
        return 1.0 - total * math.exp(log_front)
    b, c, d = x + 1 - a, 1e300, 1.0 / (x + 1 - a)
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = b + an / (c if abs(c) > 1e-300 else 1e-300)
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(log_front) * h


CHAT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 :+?.,\n"


def write_chat(path: Path, n: int = 40) -> Path:
    """A JSONL file of n short conversations (prompt/completion pairs and multi-turn messages)."""
    import json

    words = ["red", "blue", "green", "gold", "grey"]
    lines = []
    for i in range(n):
        a, b = words[i % 5], words[(i * 3 + 1) % 5]
        if i % 3:
            lines.append({"prompt": f"what follows {a} {i}?", "completion": f"{b} {i + 1}."})
        else:
            lines.append(
                {
                    "messages": [
                        {"role": "system", "content": "answer briefly."},
                        {"role": "user", "content": f"name {a}"},
                        {"role": "assistant", "content": f"{a} is {i}"},
                        {"role": "user", "content": "and next?"},
                        {"role": "assistant", "content": f"{b}."},
                    ]
                }
            )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def tiny_base(
    path: Path, flavour: str = "llama", block_size: int = 96, seed: int = 0, alphabet: str = CHAT_ALPHABET
) -> Path:
    """A randomly initialised tiny model saved as an arlm checkpoint (char tokenizer over the alphabet)."""
    import torch

    from arlm.config import ModelConfig, RunConfig
    from arlm.data.tokenizers import VocabTokenizer
    from arlm.interop.checkpoint import export_weights, save_checkpoint
    from arlm.model.transformer import Transformer

    tokenizer = VocabTokenizer.train("char", [alphabet], 1000)
    config = ModelConfig(
        flavour=flavour, vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
        d_model=32, bias=flavour == "gpt2", tie_embeddings=flavour == "gpt2",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Transformer(config)
    weights = export_weights(model.state_dict(), config)
    return save_checkpoint(path, weights=weights, tokenizer=tokenizer, config=RunConfig(model=config), meta={"step": 0})


def chat_raw(tmp_path: Path, base: Path, chat: Path, **sections) -> dict:
    """A tiny LoRA fine-tune of `base` on the conversations in `chat` (packed, rank 4)."""
    raw = tiny_raw(tmp_path, chat, **sections)
    raw["model"] = {"block_size": 64, **sections.get("model", {})}
    raw["data"].update(format="chat", tokenizer=str(base), test_fraction=0.0, **sections.get("data", {}))
    lora = {"rank": 4, "alpha": 8, "targets": ["attn", "mlp"]}
    raw["train"].update(init=str(base), lr=1e-2, lora=lora, **sections.get("train", {}))
    return raw


def exact_joint(target, prompt: list[int], n: int = 2) -> dict[tuple[int, ...], float]:
    """P(first n tokens) of plain sampling from `target` at temperature 1, by enumerating every prefix."""
    vocab = target.config.vocab_size
    joint = {}
    with torch.no_grad():
        for prefix in itertools.product(range(vocab), repeat=n - 1):
            logits = target(torch.tensor([prompt + list(prefix)]))[0]  # (T, V)
            probs_prefix = 1.0
            for j, tok in enumerate(prefix):
                probs_prefix *= float(logits[len(prompt) - 1 + j].softmax(-1)[tok])
            last = logits[-1].softmax(-1)
            for tok in range(vocab):
                joint[(*prefix, tok)] = probs_prefix * float(last[tok])
    return joint


def two_token_pvalue(target, prompt: list[int], config, draft=None, seeds: int = 2500) -> float:
    """Chi-square p-value of the first two tokens `generate` samples (seeds 0..seeds-1, `config` at temperature
    1 with max_new_tokens >= 2) against the target's exact joint distribution of them."""
    joint = exact_joint(target, prompt)
    keys = sorted(joint)
    counts = dict.fromkeys(keys, 0)
    for seed in range(seeds):
        config.seed = seed
        counts[tuple(generate(target, [prompt], config, draft=draft).generated()[0][:2])] += 1
    return chi_square_pvalue(np.array([counts[k] for k in keys]), np.array([joint[k] for k in keys]))


def hf_rounding_cache():
    """transformers' DynamicCache storing keys and values rounded to bfloat16 (and handing them back in float32): the
    reference for a float32 model decoding over a bfloat16 KV cache."""
    from transformers import DynamicCache

    class Rounding(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            rounded = (t.to(torch.bfloat16).float() for t in (key_states, value_states))
            return super().update(*rounded, layer_idx, *args, **kwargs)

    return Rounding()


def hf_pair(folder: Path, flavour: str = "llama", block_size: int = 64):
    """(our model, transformers' model) with the same random weights (seed 3; a character vocabulary; Llama with 2
    key/value heads for 4 query heads), transformers' loaded from the HF folder written under `folder`."""
    from transformers import AutoModelForCausalLM

    from arlm.config import ModelConfig
    from arlm.data.tokenizers import VocabTokenizer
    from arlm.interop.hf import save_hf_folder
    from arlm.model.transformer import Transformer

    torch.manual_seed(3)
    tokenizer = VocabTokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz .,!?"], 0)
    config = ModelConfig(
        flavour=flavour, vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=4, d_model=32,
        init_std=0.25, n_kv_head=2 if flavour == "llama" else None,
    )  # fmt: skip
    ours = Transformer(config).eval()
    theirs = AutoModelForCausalLM.from_pretrained(save_hf_folder(ours, tokenizer, folder / "hf"), dtype=torch.float32)
    return ours, theirs.eval()


def hf_generate(model, ids: torch.Tensor, mask: torch.Tensor, **kw):
    """transformers' generate() without sampling or its default processors (greedy, or beam search with num_beams),
    returning its dict with the scores; kw adds or overrides settings."""
    kw.setdefault("pad_token_id", 0)
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            min_length=0,
            do_sample=False,
            top_k=None,
            top_p=None,
            temperature=None,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
