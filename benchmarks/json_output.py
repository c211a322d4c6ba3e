"""What keeping the output to JSON costs a token: SmolLM2 decoding greedy with a JSON grammar (`--json`,
response_format) against the same decoding left free.

    .venv/bin/python benchmarks/json_output.py [--dtype auto] [--repeats 5]

SmolLM2-135M-Instruct (the shipped GGUF) laid out as `arlm generate` does, one chat prompt asking for a person as
JSON, greedy, at most 96 new tokens: free, kept to any JSON object, and kept to a closed schema (name, age),
alternating, the order reversed every repeat. The two ways write different tokens, so the table compares the
decoding rate (tokens/s after the prompt) and gives the grammar's own time a token: its mask, measured alone over
the constrained text's tokens. Time it on quiet cores."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from arlm.bench.alternate import alternate
from arlm.bench.machine import cpu_model
from arlm.config import GenerationConfig
from arlm.data.chat import encode_conversation
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.decoding.grammar import JsonGrammar
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def mask_seconds(grammar: JsonGrammar, tokens: list[int]) -> float:
    """Median seconds of one mask (and one step of the matcher) along the tokens of a constrained text."""
    matcher, times = grammar.matcher(), []
    for token in tokens:
        start = time.perf_counter()
        matcher.allowed()
        times.append(time.perf_counter() - start)
        matcher.advance(token)
    return statistics.median(times)


def main() -> None:
    """Alternate the three ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    loaded = load_model("smollm2", device="cpu", dtype=args.dtype)
    optimize_for_decoding(loaded.model)
    tok, vocab = loaded.tokenizer, loaded.model.config.vocab_size
    ask = encode_conversation([{"role": "user", "content": "Describe a person named Ada aged 36 as JSON."}], tok)
    grammars = {"free": None, "any object": JsonGrammar(tok, {"type": "object"}, vocab)}
    grammars["schema"] = JsonGrammar(tok, PERSON, vocab)
    config = GenerationConfig(strategy="greedy", max_new_tokens=96)
    engine, outputs = Engine(loaded.model), {}

    def way(name: str):
        def run() -> float:
            out = generate(engine, [ask], config, eos_id=tok.eos_id, grammar=grammars[name])
            outputs[name] = out
            return out.stats["decode_tokens_per_s"]

        return run

    for name in grammars:  # warm-up, untimed
        way(name)()
    rates = alternate({name: way(name) for name in grammars}, args.repeats)
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, SmolLM2 {loaded.dtype}")
    print(f"# greedy, at most {config.max_new_tokens} new tokens, {args.repeats} repeats, medians")
    print("way | new tokens | tokens/s after the prompt | / free | mask alone (ms a token)")
    free = statistics.median(rates["free"])
    for name, grammar in grammars.items():
        out, rate = outputs[name], statistics.median(rates[name])
        n = out.stats["lengths"][0]
        mask = f"{1000 * mask_seconds(grammar, out.generated()[0][: n - 1]):.3f}" if grammar else "-"
        print(f"{name} | {n} | {rate:.1f} | {rate / free:.2f}x | {mask}")


if __name__ == "__main__":
    main()
