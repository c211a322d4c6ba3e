"""Beam search's (or greedy decoding's) cost by the max_new_tokens a request allows, for the same tokens made.

    PYTHONPATH=SRC .venv/bin/python benchmarks/beam_max_new.py [--dtype int4] [--max-new 64,1000,8000]
        [--tokens 64] [--beams 4] [--strategy beam|greedy] [--repeats 3] [--label LABEL]

SmolLM2-135M-Instruct (the shipped GGUF) laid out by optimize_for_decoding as `arlm generate` does; beam search
traced (as the server's lane always is), early stopping, every hypothesis stopped at --tokens generated tokens by
should_stop, so that each run makes the same tokens whatever max_new_tokens is; prints the seconds of each run. To
compare two trees, run it with PYTHONPATH at each tree's src/ in turn (docs/perf.md "Beam search's cache reordered
over its filled positions"). Time it on quiet cores."""

from __future__ import annotations

import argparse
import time

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding

PROMPT = "The history of the printing press in Europe"


def main() -> None:
    """Time beam search at each --max-new, --repeats times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="int4")
    parser.add_argument("--max-new", default="64,1000,8000")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--strategy", choices=["beam", "greedy"], default="beam")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    lm = load_model("smollm2", dtype=args.dtype)
    optimize_for_decoding(lm.model)
    tok = lm.tokenizer
    ids = [tok.encode(PROMPT)]
    for max_new in map(int, args.max_new.split(",")):
        config = GenerationConfig(
            strategy=args.strategy, num_beams=args.beams, max_new_tokens=max_new, early_stopping=True
        )
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = generate(
                lm.model, ids, config, eos_id=tok.eos_id, pad_id=tok.pad_id, trace=lambda event: None,
                should_stop=lambda row, made: len(made) >= args.tokens,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            made = len(out.generated()[0])
            line = f"{args.label} {args.strategy} {args.dtype} max_new_tokens={max_new}: {seconds:.3f} s, {made} tokens"
            print(line, flush=True)


if __name__ == "__main__":
    main()
