"""Prompt lookup's drafting policies replayed offline: how many tokens each would draft and have accepted on
SmolLM2's greedy output for the built-in prompt sets, and the time that would take at measured forward costs.

    .venv/bin/python benchmarks/lookup_replay.py decode [--dtype float32] [--new-tokens 96]   # greedy outputs, costs
    .venv/bin/python benchmarks/lookup_replay.py replay [--dtype float32] [--new-tokens 96]   # the table

Exact for greedy decoding: speculative decoding at temperature 0 writes greedy's text, so a drafted token is
accepted exactly when it equals greedy's next token, and a policy's rounds follow from greedy's output alone. A
round that drafts g tokens costs one forward over 1 + g new tokens (`arlm.bench.forward.forward_times`, measured
once per dtype by `decode`); a policy's speed-up on a prompt is (tokens x one-token forward) / (sum of its rounds'
costs). It ranks policies without timing each one (arlm/bench/lookup_replay.py; tests/bench/test_lookup_replay.py checks
it against real decoding); the chosen one is then timed by benchmarks/speculative.py."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from arlm.bench.forward import forward_times
from arlm.bench.lookup_replay import by_match, fixed, replay
from arlm.bench.prompt_sets import chat_ids, load_prompt_set
from arlm.config import GenerationConfig
from arlm.decoding.drafters import MAX_ADAPTIVE_DRAFT, lookup_ngram
from arlm.decoding.forward_cost import ForwardCost
from arlm.decoding.generate import generate
from arlm.decoding.speculative import AdaptiveGamma
from arlm.interop.loading import DTYPES, load_model
from arlm.model.inference import optimize_for_decoding


def decode(dtype: str, new_tokens: int, path: Path) -> None:
    """Greedy outputs of every prompt of both sets (no stop at EOS; replay cuts at EOS) and forward costs."""
    loaded = load_model("smollm2", dtype=dtype)
    model, tok = optimize_for_decoding(loaded.model.eval()), loaded.tokenizer
    config = GenerationConfig(strategy="greedy", max_new_tokens=new_tokens, stop_at_eos=False)
    sets = {}
    for name in ("grounded", "chat"):
        prompts = [chat_ids(tok, item) for item in load_prompt_set(name)]
        sets[name] = [{"prompt": p, "greedy": generate(model, [p], config).generated()[0]} for p in prompts]
    costs = forward_times(model, max_tokens=MAX_ADAPTIVE_DRAFT + 1, repeats=5)
    path.write_text(json.dumps({"eos": tok.eos_id, "forward_ms": costs, "sets": sets}))
    print(f"wrote {path}; forward ms by new tokens: " + ", ".join(f"{k}: {v:.1f}" for k, v in costs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("decode", "replay"))
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--new-tokens", type=int, default=96)
    args = parser.parse_args()
    path = Path(f"/tmp/arlm-lookup-replay-{args.dtype}-{args.new_tokens}.json")
    if args.step == "decode":
        return decode(args.dtype, args.new_tokens, path)
    data = json.loads(path.read_text())
    ms, eos = {int(k): v for k, v in data["forward_ms"].items()}, data["eos"]
    n = GenerationConfig().prompt_lookup_ngram  # the default longest n-gram
    policies = {f"γ={g}": (fixed(g), n, False) for g in (2, 3, 4, 8, 16)}
    policies |= {"γ=4, matches of 2+ tokens": (fixed(4, 2), n, False)}
    policies |= {"γ by running acceptance (AdaptiveGamma)": (fixed(MAX_ADAPTIVE_DRAFT), n, True)}
    policies |= {"γ by match length (--adaptive-draft, sampling)": (by_match, lookup_ngram(n, by_match=True), False)}
    policies |= {"γ by match length and cost (--adaptive-draft, greedy)": (by_match, lookup_ngram(n, True), True)}
    print(f"{args.dtype}; greedy outputs cut at EOS; speed-up over greedy per prompt: median, worst")
    print("| policy | " + " | ".join(data["sets"]) + " |")
    print("|---" * (len(data["sets"]) + 1) + "|")
    for label, (policy, max_n, adaptive) in policies.items():
        cells = []
        for rows in data["sets"].values():
            ratios = []
            for row in rows:
                greedy = row["greedy"][: row["greedy"].index(eos) + 1] if eos in row["greedy"] else row["greedy"]
                rate = AdaptiveGamma(MAX_ADAPTIVE_DRAFT, 0.0, ForwardCost(measure=True)) if adaptive else None
                run = replay(row["prompt"], greedy, policy, max_n, ms, rate)
                ratios.append(run.tokens * ms[1] / run.cost)
            cells.append(f"{statistics.median(ratios):.2f}×, worst {min(ratios):.2f}×")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
