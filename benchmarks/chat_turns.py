"""A chat's later turns with the KV cache kept from turn to turn (`arlm chat`'s default) against encoding the whole
conversation afresh each turn (`--no-reuse-prefix`).

    .venv/bin/python benchmarks/chat_turns.py [--dtype auto] [--max-new-tokens 64] [--repeats 3]

SmolLM2-135M-Instruct (the shipped GGUF) laid out by optimize_for_decoding as `arlm chat` does, greedy, one
conversation of eight questions that build on each other, held once untimed first. Each repeat holds the whole
conversation once each way, alternating, the order reversed every repeat. The table gives per turn the prompt's length
(tokens), how many of them the kept cache held, and the medians of the time to the first token and of the turn's whole
time each way, with their ratio; and whether both ways wrote the same answers. Time it on quiet cores."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from arlm.bench.alternate import alternate
from arlm.bench.machine import cpu_model
from arlm.config import GenerationConfig
from arlm.data.chat import encode_conversation
from arlm.decoding.chat import ChatSession
from arlm.interop.loading import load_model
from arlm.model.inference import optimize_for_decoding

QUESTIONS = [
    "Tell me about the history of Rome in a few sentences.",
    "What about its emperors?",
    "Which one was the most famous?",
    "Why is he remembered?",
    "What happened after him?",
    "How did the empire end?",
    "What did it leave behind?",
    "Summarise our conversation so far.",
]


def conversation(loaded, config: GenerationConfig, reuse: bool, rows: list[dict]) -> float:
    """Hold the conversation once; each turn's prompt length, reused positions, first-token and whole seconds, and
    answer appended to `rows`. The whole conversation's seconds."""
    session = ChatSession(loaded.model, loaded.tokenizer, config, reuse_prefix=reuse)
    began = time.perf_counter()
    for question in QUESTIONS:
        start, first = time.perf_counter(), []
        answer = session.reply(question, on_token=lambda _, first=first: first or first.append(time.perf_counter()))
        end = time.perf_counter()
        prompt = encode_conversation(session.system + session.turns[:-1], loaded.tokenizer)
        rows.append({"prompt": len(prompt), "reused": session.reused, "first": first[0] - start, "turn": end - start})
        rows[-1]["answer"] = answer
    return time.perf_counter() - began


def main() -> None:
    """Alternate the two ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model("smollm2", device="cpu", dtype=args.dtype)
    optimize_for_decoding(loaded.model)
    config = GenerationConfig(strategy="greedy", max_new_tokens=args.max_new_tokens)
    rows: dict[str, list[list[dict]]] = {"kept": [], "afresh": []}

    def way(name: str, reuse: bool):
        def run() -> float:
            rows[name].append([])
            return conversation(loaded, config, reuse, rows[name][-1])

        return run

    conversation(loaded, config, True, [])  # warm-up, untimed: the first forwards after a load are slower
    totals = alternate({"kept": way("kept", True), "afresh": way("afresh", False)}, args.repeats)
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, SmolLM2 {loaded.dtype}")
    print(f"# greedy, at most {args.max_new_tokens} new tokens a turn, {args.repeats} repeats, medians")
    print("turn | prompt | reused | first token kept / afresh (ms) | ratio | turn kept / afresh (ms) | ratio")
    for t in range(len(QUESTIONS)):
        kept, afresh = ([run[t] for run in rows[name]] for name in ("kept", "afresh"))
        f_k, f_a = (1000 * statistics.median(r["first"] for r in side) for side in (kept, afresh))
        w_k, w_a = (1000 * statistics.median(r["turn"] for r in side) for side in (kept, afresh))
        print(
            f"{t + 1} | {kept[0]['prompt']} | {kept[0]['reused']} | {f_k:.1f} / {f_a:.1f} | {f_a / f_k:.2f}x | "
            f"{w_k:.0f} / {w_a:.0f} | {w_a / w_k:.2f}x"
        )
    same = all(a["answer"] == b["answer"] for x, y in zip(rows["kept"], rows["afresh"]) for a, b in zip(x, y))
    k, a = statistics.median(totals["kept"]), statistics.median(totals["afresh"])
    print(f"whole conversation: {k:.2f} s kept, {a:.2f} s afresh ({a / k:.2f}x); the same answers: {same}")


if __name__ == "__main__":
    main()
