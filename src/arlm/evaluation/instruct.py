"""Instruction data from the built-in in-context-learning tasks, and zero-shot accuracy of a chat model on it.

Each task item becomes a conversation: the user gives the task's description and the input, the assistant answers
with the output. A fixed share of each task's query items (every `every`-th) is held out; the rest, and the
demonstrations, are training data. A model answers a held-out item through its chat template with no examples
(greedy, up to the end of its turn or line); exact match after stripping, with a 95% Wilson interval, and, as a
lenient second score, whether the gold answer appears in the reply as a whole word (case-insensitive): a chat model
that answers in a sentence ("The capital city of Norway is Oslo.") is wrong by exact match and right by the second.
An answer equal to its input (deer -> deer) counts as contained when the reply merely repeats the input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from arlm.data.chat_template import PLAIN_TEMPLATE, Message, apply_chat_template
from arlm.data.tokenizers import Tokenizer
from arlm.evaluation.icl import builtin_task_names, generate_texts, load_task, wilson_interval

HELD_OUT_EVERY = 3  # every third query item of each task is held out


@dataclass
class HeldOut:
    """A held-out item: its task, the conversation up to the answer, and the gold answer."""

    task: str
    messages: list[Message]
    answer: str


def question(description: str, text: str) -> list[Message]:
    """The user turn asking one item of a task."""
    return [{"role": "user", "content": f"{description}\n{text}"}]


def instruction_split(
    tasks: Sequence[str] | None = None, every: int = HELD_OUT_EVERY, limit: int | None = None
) -> tuple[list[list[Message]], list[HeldOut]]:
    """(training conversations, held-out items) of the tasks (all built-in ones by default); `limit` caps the
    held-out items per task."""
    train: list[list[Message]] = []
    held: list[HeldOut] = []
    for name in tasks or builtin_task_names():
        task = load_task(name)
        kept = []
        for i, item in enumerate(task.queries):
            if i % every == 0:
                kept.append(HeldOut(task.name, question(task.description, item.input), item.output))
            else:
                train.append([*question(task.description, item.input), {"role": "assistant", "content": item.output}])
        held.extend(kept[:limit] if limit else kept)
        for demo in task.demos:
            train.append([*question(task.description, demo.input), {"role": "assistant", "content": demo.output}])
    return train, held


def write_chat_jsonl(path: str | Path, conversations: list[list[Message]]) -> Path:
    """Conversations as a JSONL file of {"messages": [...]} records (data.format chat reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def instruct_accuracy(
    model: torch.nn.Module, tokenizer: Tokenizer, items: Sequence[HeldOut], *, max_new_tokens: int = 16
) -> dict:
    """Zero-shot exact-match accuracy over the items, overall and per task: {n, correct, accuracy, ci, contained};
    the replies under "answers"."""
    template = tokenizer.chat_template or PLAIN_TEMPLATE
    eos = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    prompts = [apply_chat_template(template, item.messages, True, eos_token=eos) for item in items]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, truncate=True)
    scores = [
        (int(text.strip() == item.answer), int(contains_answer(text, item.answer))) for text, item in zip(texts, items)
    ]
    by_task: dict[str, list[tuple[int, int]]] = {}
    for score, item in zip(scores, items):
        by_task.setdefault(item.task, []).append(score)
    return {**_summary(scores), "tasks": {name: _summary(s) for name, s in by_task.items()}, "answers": texts}


def contains_answer(reply: str, answer: str) -> bool:
    """Whether the answer appears in the reply as a whole word (or words), ignoring case."""
    return re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", reply, flags=re.IGNORECASE) is not None


def _summary(scores: list[tuple[int, int]]) -> dict:
    """(exact, contained) per item -> counts, exact-match accuracy and its 95% Wilson interval."""
    n, correct, contained = len(scores), sum(s[0] for s in scores), sum(s[1] for s in scores)
    accuracy = correct / n if n else 0.0
    return {
        "n": n,
        "correct": correct,
        "accuracy": accuracy,
        "ci": list(wilson_interval(correct, n)),
        "contained": contained,
    }
