"""The main job: train the quickstart model and a draft, then compare greedy, sampling, beam and speculative.

`make demo` runs it: the quickstart model and a small draft on the same tokenizer, then one prompt decoded with
greedy, top-p sampling, beam search, speculative decoding and prompt lookup, side by side."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from arlm.commands.train import train_command
from arlm.config import GenerationConfig, build_config
from arlm.decoding.generate import generate
from arlm.decoding.types import GenerationOutput
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding

DEMO_PROMPT = "Return the"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def run(args: argparse.Namespace) -> int:
    """Run the main job."""
    demo_command()
    return 0


def demo_command(*, new_tokens: int = 80, log=print) -> dict[str, dict]:
    """Run the whole main job and print the decoding comparison."""
    start = time.perf_counter()
    target = train_command(build_config("quickstart"), overwrite=True, log=log)
    log("\n=== draft model for speculative decoding (same tokenizer) ===")
    draft = train_command(build_config("quickstart-draft"), overwrite=True, log=log)
    log("\n=== one prompt, four ways ===")
    rows = compare_decoding(target.run_dir, draft.run_dir, DEMO_PROMPT, new_tokens, log)
    log(f"\nmain job finished in {time.perf_counter() - start:.0f} s")
    return rows


def _strategies(new_tokens: int) -> list[tuple[str, GenerationConfig, bool]]:
    """(label, config, uses the draft)."""
    return [
        ("greedy", GenerationConfig(strategy="greedy", max_new_tokens=new_tokens), False),
        (
            "sample t=0.8 top-p 0.9",
            GenerationConfig(strategy="sample", temperature=0.8, top_p=0.9, seed=0, max_new_tokens=new_tokens),
            False,
        ),
        ("beam search, 4 beams", GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=new_tokens), False),
        (
            "speculative (greedy, γ=4)",
            GenerationConfig(strategy="speculative", temperature=0, num_draft_tokens=4, max_new_tokens=new_tokens),
            True,
        ),
        (
            "prompt lookup (greedy)",
            GenerationConfig(strategy="prompt-lookup", temperature=0, num_draft_tokens=4, max_new_tokens=new_tokens),
            False,
        ),
    ]


def compare_decoding(
    target_ref: str | Path, draft_ref: str | Path, prompt: str, new_tokens: int, log=print, repeats: int = 3
) -> dict[str, dict]:
    """Decode `prompt` by each strategy (median tokens/s of `repeats`), print text and figures."""
    target, draft = load_model(target_ref), load_model(draft_ref)
    optimize_for_decoding(target.model)
    optimize_for_decoding(draft.model)
    tok = target.tokenizer
    ids = tok.encode(prompt)
    rows: dict[str, dict] = {}
    for label, config, uses_draft in _strategies(new_tokens):
        outs: list[GenerationOutput] = [
            generate(
                target.model,
                [ids],
                config,
                eos_id=tok.eos_id,
                pad_id=tok.pad_id,
                draft=draft.model if uses_draft else None,
            )
            for _ in range(repeats)
        ]
        out = outs[-1]
        rows[label] = {
            "tokens_per_s": statistics.median(o.stats["tokens_per_s"] for o in outs),
            "text": tok.decode(out.generated()[0]),
            "ids": out.generated()[0],
            "acceptance": out.stats.get("acceptance_rate"),
        }
    greedy = rows["greedy"]
    log(f"prompt: {prompt!r}; {new_tokens} new tokens at most; median of {repeats} runs each")
    log(f"{'strategy':<28}{'tokens/s':>10}{'vs greedy':>11}{'accepted':>10}  text")
    for label, row in rows.items():
        accepted = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
        text = " ".join((prompt + row["text"]).split())[:70]
        log(
            f"{label:<28}{row['tokens_per_s']:>10,.0f}{row['tokens_per_s'] / greedy['tokens_per_s']:>10.2f}x"
            f"{accepted:>10}  {text}"
        )
    for label in ("speculative (greedy, γ=4)", "prompt lookup (greedy)"):
        same = rows[label]["ids"] == greedy["ids"]
        log(f"{label}: output identical to greedy: {'yes' if same else 'NO'}")
    return rows
