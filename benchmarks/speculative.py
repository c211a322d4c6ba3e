"""Speculative decoding that pays, and where it does not: SmolLM2-135M-Instruct on CPU, greedy against prompt lookup
(gamma fixed and adaptive) and self-speculation (its own first layers, or its own weights at a cheaper dtype, as the
draft), on the built-in grounded set (requests that quote or transform their input) and the chat set (general
questions).

    .venv/bin/python benchmarks/speculative.py [--dtype int4] [--new-tokens 96] [--repeats 3] [--self-layers 20]
        [--self-dtype int4] [--limit N] [--sets chat] [--stop-at-eos]

Runs alternate the order of the schemes, medians are kept; every output is checked identical to greedy's. Prints
the CPU model name and one markdown table per set for docs/perf.md. Time it on quiet cores."""

from __future__ import annotations

import argparse

import torch

from arlm.bench.machine import cpu_model
from arlm.bench.prompt_sets import chat_ids, load_prompt_set
from arlm.bench.speculative import run_speculative_bench, schemes
from arlm.interop.loading import DTYPES, load_model
from arlm.model.inference import optimize_for_decoding


def main() -> None:
    """Load SmolLM2, encode the sets, run every scheme on every prompt, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--self-layers", type=int, default=20, help="layers of the self-draft (0: none)")
    parser.add_argument(
        "--self-dtype",
        default="int4",
        choices=("", *DTYPES),
        help="dtype of the target's own weights as a draft ('': none)",
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts of each set (0: all)")
    parser.add_argument("--sets", nargs="+", default=["grounded", "chat"], choices=["grounded", "chat"])
    parser.add_argument(
        "--stop-at-eos",
        action="store_true",
        help="end each run at the answer's EOS, as a request does",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype)
    target, tok = optimize_for_decoding(loaded.model.eval()), loaded.tokenizer
    sets = {}
    for name in args.sets:
        items = load_prompt_set(name)[: args.limit or None]
        sets[name] = [chat_ids(tok, item) for item in items]
    threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()}, {threads} threads; torch {torch.__version__}; {args.model}, {args.dtype}")
    ending = "at most, ending at EOS" if args.stop_at_eos else "a run (no stop at EOS)"
    print(f"{args.new_tokens} new tokens {ending}, {args.repeats} runs per scheme and prompt, alternating")
    cheaper = None
    if args.self_dtype and args.self_dtype != args.dtype:
        cheaper = (args.self_dtype, optimize_for_decoding(load_model(args.model, dtype=args.self_dtype).model.eval()))
    plan = schemes(
        target, args.new_tokens, args.self_layers or None, args.gamma, stop_at_eos=args.stop_at_eos, cheaper=cheaper
    )
    eos = tok.eos_id
    warm = {"warm-up": next(iter(sets.values()))[:1]}
    run_speculative_bench(target, warm, plan, 1, log=lambda line: None, eos_id=eos)  # untimed
    run_speculative_bench(target, sets, plan, args.repeats, eos_id=eos)


if __name__ == "__main__":
    main()
