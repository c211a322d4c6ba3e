"""The main job: train the quickstart model and a draft, then compare greedy, sampling, beam and speculative.

`make demo` runs it: the quickstart model and a small draft on the same tokenizer, then one prompt decoded with
greedy, top-p sampling, beam search, speculative decoding and prompt lookup, side by side, with one line saying why
speculative decoding does not pay there; then, where SmolLM2 is installed, a grounded request (fix the typos in a
paragraph) decoded by SmolLM2 with greedy decoding and prompt lookup: the work where speculative decoding pays."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.train import train_command
from arlm.config import GenerationConfig, build_config
from arlm.errors import ArlmError

if TYPE_CHECKING:
    import torch

    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.types import GenerationOutput

DEMO_PROMPT = "Return the"
GROUNDED_ITEM = "fix-typos-1"  # a spelling correction: the answer copies most of the prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags."""


def run(args: argparse.Namespace) -> int:
    """Run the main job."""
    demo_command()
    return 0


def demo_command(*, new_tokens: int = 80, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run the whole main job and print the decoding comparison."""
    from arlm.interop.loading import load_model  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_decoding  # lazy: kept out of --help

    start = time.perf_counter()
    target = train_command(build_config("quickstart"), overwrite=True, log=log)
    log("\n=== draft model for speculative decoding (same tokenizer) ===")
    draft = train_command(build_config("quickstart-draft"), overwrite=True, log=log)
    log("\n=== one prompt, four ways ===")
    rows = compare_decoding(target.run_dir, draft.run_dir, DEMO_PROMPT, new_tokens, log)
    log("\n=== where speculative decoding pays: a grounded request to SmolLM2-135M-Instruct ===")
    try:
        smollm2 = load_model("smollm2")
    except (ArlmError, ImportError) as exc:
        log(f"skipped: SmolLM2 is not available here ({exc})")
    else:
        model = optimize_for_decoding(smollm2.model)
        rows["grounded"] = compare_grounded(model, smollm2.tokenizer, GROUNDED_ITEM, 96, log)
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
    target_ref: str | Path,
    draft_ref: str | Path,
    prompt: str,
    new_tokens: int,
    log: Callable[[str], None] = print,
    repeats: int = 3,
) -> dict[str, dict]:
    """Decode `prompt` by each strategy (median tokens/s of `repeats`), print text and figures."""
    from arlm.decoding.generate import generate  # lazy: kept out of --help
    from arlm.interop.loading import load_model  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_decoding  # lazy: kept out of --help

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
    log(_why(rows, len(ids)))
    return rows


def _why(rows: dict[str, dict], prompt_tokens: int) -> str:
    """One line on what the two speculative schemes gain on the demo prompt and why, from their own figures."""
    spec, lookup = rows["speculative (greedy, γ=4)"], rows["prompt lookup (greedy)"]
    base = rows["greedy"]["tokens_per_s"]
    ratio = spec["tokens_per_s"] / base
    cost = (
        ": at this size a draft forward costs nearly what a target forward does (per-call overhead), so it cannot pay"
        if ratio < 1
        else ""
    )
    return (
        f"why: speculative decoding {ratio:.2f}× at {spec['acceptance']:.0%} acceptance{cost}; prompt lookup "
        f"{lookup['tokens_per_s'] / base:.2f}× at {lookup['acceptance']:.0%}: a {prompt_tokens}-token prompt and "
        "the output so far are all it can copy from"
    )


def compare_grounded(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    item_id: str,
    new_tokens: int,
    log: Callable[[str], None] = print,
    repeats: int = 3,
) -> dict:
    """One request of the built-in grounded set decoded by greedy and prompt lookup (fixed and adaptive gamma),
    alternating, median tokens/s of `repeats`; the table, the answer and one line on why lookup pays here."""
    from arlm.bench.prompt_sets import chat_ids, load_prompt_set  # lazy: kept out of --help
    from arlm.bench.speculative import compare_on_prompt, format_table, schemes, summarize  # lazy: kept out of --help

    item = next(i for i in load_prompt_set("grounded") if i.id == item_id)
    plan = schemes(model, new_tokens, self_layers=None, stop_at_eos=True)
    rows = compare_on_prompt(model, chat_ids(tokenizer, item), plan, repeats, eos_id=tokenizer.eos_id)
    summary = summarize([rows], [s.label for s in plan])
    log(f"request: {item.instruction!r} ({len(item.input)} characters of input); up to {new_tokens} new tokens or EOS")
    for line in format_table(f"median of {repeats} runs each, alternating", summary):
        log(line)
    answer = [t for t in rows["greedy"]["ids"] if t != tokenizer.eos_id]
    log("answer: " + " ".join(tokenizer.decode(answer).split())[:150])
    lookup = summary[plan[1].label]
    verdict = "pays" if lookup["ratio"] > 1 else "does not pay on this machine"
    log(
        f"why: prompt lookup {verdict} ({lookup['ratio']:.2f}×): the answer copies the request's text, so "
        f"{lookup['acceptance']:.0%} of the drafted tokens copied from it are accepted, at the price of a forward "
        "over γ+1 tokens per round"
    )
    return summary
