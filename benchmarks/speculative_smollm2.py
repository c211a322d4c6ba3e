"""Speculative decoding of SmolLM2-135M on CPU: acceptance and speed of its draft before and after distillation.

    .venv/bin/python benchmarks/speculative_smollm2.py --draft runs/smollm2-draft [--new-tokens 64]

"Before" is the draft as `arlm distill` initializes it (the teacher's embeddings and 2 of its 30 blocks, no
training); "after" is the distilled checkpoint. Each prompt is decoded by plain greedy, by greedy speculative
decoding (gamma 4) with each draft, and by prompt lookup; every output is checked identical to plain greedy.
Prints a markdown table (per-strategy medians over prompts) for docs/perf.md."""

from __future__ import annotations

import argparse
import statistics

import torch

from arlm.bench.machine import cpu_model
from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding
from arlm.training.distill import draft_from_teacher

PROMPTS = [
    "The Python standard library provides modules for reading and writing files, working with",
    "A list comprehension consists of brackets containing an expression followed by a for clause, then",
    "The capital of France is Paris. The capital of Germany is",
    "Once upon a time, in a small village by the sea, there lived",
]


def run(model, prompt_ids: list[int], config: GenerationConfig, draft=None) -> dict:
    """One decode: tokens/s, acceptance and tokens per target forward (speculative only), generated ids."""
    out = generate(model, [prompt_ids], config, draft=draft)
    stats = out.stats
    return {
        "ids": out.generated()[0],
        "tokens_per_s": stats["tokens_per_s"],
        "acceptance": stats.get("acceptance_rate"),
        "per_forward": stats.get("tokens_per_target_forward"),
    }


def main() -> None:
    """Decode every prompt with every strategy, check exactness, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--draft", default="runs/smollm2-draft", help="the distilled draft (checkpoint or run)")
    parser.add_argument("--layers", type=int, default=2, help="blocks of the untrained draft ('before')")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    loaded = load_model("smollm2")
    target, tokenizer = loaded.model.eval(), loaded.tokenizer
    drafts = {"before": draft_from_teacher(target, args.layers).eval(), "after": load_model(args.draft).model.eval()}
    optimize_for_decoding(target)
    for draft in drafts.values():
        optimize_for_decoding(draft)
    n = args.new_tokens
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=n, stop_at_eos=False)
    spec = GenerationConfig(
        strategy="speculative", temperature=0, num_draft_tokens=4, max_new_tokens=n, stop_at_eos=False
    )
    lookup = GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=n, stop_at_eos=False)
    rows: dict[str, list[dict]] = {}
    for text in PROMPTS:
        ids = tokenizer.encode(text)
        run(target, ids, greedy)  # warm-up
        plain = run(target, ids, greedy)
        cases = {
            "greedy": plain,
            "speculative, draft before distillation": run(target, ids, spec, drafts["before"]),
            "speculative, distilled draft": run(target, ids, spec, drafts["after"]),
            "prompt lookup": run(target, ids, lookup),
        }
        for name, row in cases.items():
            row["identical"] = row["ids"] == plain["ids"]
            row["speedup"] = row["tokens_per_s"] / plain["tokens_per_s"]
            rows.setdefault(name, []).append(row)
    print(
        f"SmolLM2-135M float32, {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{len(PROMPTS)} prompts x {n} new tokens, gamma 4; medians over prompts"
    )
    print("| strategy | tokens/s | speed-up vs greedy | acceptance | tokens per target forward | identical |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, measured in rows.items():
        acc = f"{_median(measured, 'acceptance'):.1%}" if measured[0]["acceptance"] is not None else "-"
        per = f"{_median(measured, 'per_forward'):.2f}" if measured[0]["per_forward"] is not None else "1.00"
        same = "yes" if all(r["identical"] for r in measured) else "NO"
        rate, speedup = _median(measured, "tokens_per_s"), _median(measured, "speedup")
        print(f"| {name} | {rate:.1f} | {speedup:.2f}x | {acc} | {per} | {same} |")


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


if __name__ == "__main__":
    main()
