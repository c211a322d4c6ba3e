"""In-context learning: zero-, one- and few-shot accuracy on small built-in tasks, with no gradient updates.

A task is a JSONL file: a first line {"description": ...}, then items {"input", "output"} with optional
"choices" (the output is one of them) and "split": "demo" for the items kept as demonstrations. A prompt is
the description line, k demonstrations `input => output` (the first k demo items), then `query =>`; the
answer is what follows "=> " up to the end of the line. Scoring is by greedy (or beam) generation with exact
match, or by the log-likelihood of each choice as the continuation " choice" (argmax; acc_norm divides the
sum of log-probs by the choice's UTF-8 bytes). Accuracies come with 95% Wilson intervals.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arlm.config import GenerationConfig
from arlm.data.corpus import jsonl_lines
from arlm.data.tokenizers import Tokenizer
from arlm.decoding.generate import generate
from arlm.decoding.stops import cut_at_stop, stop_checker
from arlm.errors import ArlmError
from arlm.evaluation.defaults import DEFAULT_SHOTS

TASKS_DIR = Path(__file__).parent / "tasks"
SCORINGS = ("generate", "loglikelihood")
SEPARATOR = " =>"  # between an input and its output; the output follows after one space


@dataclass
class Item:
    """One question: input text, gold output, and the choices when the task is multiple choice."""

    input: str
    output: str
    choices: list[str] | None = None


@dataclass
class Task:
    """A named task: its description line, query items and demonstration items."""

    name: str
    description: str
    queries: list[Item] = field(default_factory=list)
    demos: list[Item] = field(default_factory=list)

    @property
    def multiple_choice(self) -> bool:
        """True when every query carries its own choices."""
        return bool(self.queries) and all(item.choices for item in self.queries)


def builtin_task_names() -> list[str]:
    """Names of the tasks shipped with arlm."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.jsonl"))


def load_task(name_or_path: str | Path) -> Task:
    """A built-in task by name, or any task file in the JSONL format above."""
    path = Path(name_or_path)
    if path.suffix != ".jsonl":
        path = TASKS_DIR / f"{name_or_path}.jsonl"
        if not path.exists():
            raise ArlmError(f"unknown ICL task {name_or_path!r}; built-in: {', '.join(builtin_task_names())}")
    if not path.exists():
        raise ArlmError(f"task file {path} does not exist")
    records = [(number, _record(path, number, line)) for number, line in jsonl_lines(path) if line.strip()]
    if not records or set(records[0][1]) != {"description"}:
        raise ArlmError(f'{path}: the first line must be {{"description": "..."}}')
    task = Task(path.stem, str(records[0][1]["description"]))
    for number, record in records[1:]:
        if not isinstance(record.get("input"), str) or not isinstance(record.get("output"), str):
            raise ArlmError(f'{path} line {number}: an item needs string "input" and "output"')
        choices = record.get("choices")
        if choices is not None and record["output"] not in choices:
            raise ArlmError(f"{path} line {number}: the output {record['output']!r} is not among its choices")
        item = Item(record["input"], record["output"], list(choices) if choices is not None else None)
        (task.demos if record.get("split") == "demo" else task.queries).append(item)
    if not task.queries:
        raise ArlmError(f"{path} holds no query items")
    return task


def _record(path: Path, number: int, line: str) -> dict:
    """One line of a task file as a JSON object, refused naming its line of the file."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ArlmError(f"{path} line {number} is not valid JSON ({error.msg}, column {error.colno})") from None
    if not isinstance(record, dict):
        raise ArlmError(f"{path} line {number}: each line is a JSON object, got {type(record).__name__}")
    return record


def build_prompt(task: Task, query: Item, shots: int) -> str:
    """The description line, `shots` demonstrations `input => output`, then `query =>` (no trailing space)."""
    demos = [d for d in task.demos if d.input != query.input][:shots]
    if len(demos) < shots:
        raise ArlmError(
            f"task {task.name} has {len(demos)} demonstrations besides the query {query.input!r} (one equal to a "
            f"query is left out of its prompt); {shots} shots were asked for"
        )
    lines = [task.description, *(f"{d.input}{SEPARATOR} {d.output}" for d in demos)]
    return "\n".join(lines) + f"\n{query.input}{SEPARATOR}"


def fitting_prompts(
    model: torch.nn.Module, tokenizer: Tokenizer, task: Task, shots: int, limit: int | None
) -> list[str]:
    """The prompts of a task's queries (the first `limit`) at `shots`, refused where one has too few demonstrations
    or does not leave the model's context a token to answer in."""
    queries = task.queries[:limit] if limit else task.queries
    prompts = [build_prompt(task, item, shots) for item in queries]
    block = model.config.block_size
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    if longest + 1 >= block:
        raise ArlmError(
            f"{task.name} with {shots} shots needs prompts of {longest} tokens but the model's context is {block}"
        )
    return prompts


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96); (0, 1) when n = 0. It holds the
    proportion itself (at 70/70 rounding put the upper end at 0.9999999999999999, under the accuracy of 1)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)


def prefix_id(tokenizer: Tokenizer) -> int:
    """The id that stands for an empty context: BOS, else EOS, else 0."""
    return next((i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None), 0)


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Ids of a context and its continuation as the model sees the joined text: whitespace ending the context
    moves to the continuation, the whole is encoded once and split where the context's ids end (an empty
    context becomes the prefix id)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [prefix_id(tokenizer)], tokenizer.encode(continuation)
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return context_ids, whole[len(context_ids) :]
    return context_ids, tokenizer.encode(continuation)


@torch.inference_mode()
def continuation_logprobs(
    model: torch.nn.Module, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 32
) -> list[tuple[float, bool]]:
    """(sum of log-probs of the continuation ids given the context ids, whether greedy decoding yields them)
    per pair. Each distinct context (the choices of one question share one) runs through the model once, in
    batches of about batch_size continuations; a context too long for the model keeps its newest tokens."""
    block = model.config.block_size
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError("a context and a continuation need at least one token each (see encode_pair)")
        if len(continuation) > block:
            raise ArlmError(f"a continuation of {len(continuation)} tokens exceeds the model's context of {block}")
        groups.setdefault(tuple(context), []).append(i)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    batch: list[tuple[list[int], list[int]]] = []  # (context, indices of its pairs)
    rows = width = longest = 0
    # Sorted by content, not by arrival: the same set of pairs is always batched the same way.
    for context in sorted(groups, key=lambda c: (-len(c), c)):
        indices = groups[context]
        most = max(len(pairs[i][1]) for i in indices)
        kept = list(context[-(block + 1 - most) :])  # context + continuation[:-1] must fit the model
        if batch and (rows + len(indices) > batch_size or max(width, len(kept)) + max(longest, most) - 1 > block):
            _score_batch(model, batch, pairs, results)
            batch, rows, width, longest = [], 0, 0, 0
        batch.append((kept, indices))
        rows, width, longest = rows + len(indices), max(width, len(kept)), max(longest, most)
    if batch:
        _score_batch(model, batch, pairs, results)
    return results


def _score_batch(
    model: torch.nn.Module,
    batch: list[tuple[list[int], list[int]]],
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    results: list[tuple[float, bool]],
) -> None:
    """Left-padded contexts once into a KV cache, then every continuation without its last token (only ever a
    target) as one right-padded batch on copies of its context's cache rows; the padding is never attended."""
    device = next(model.parameters()).device
    width = max(len(context) for context, _ in batch)
    continuations = [list(pairs[i][1]) for _, indices in batch for i in indices]
    longest = max(len(c) for c in continuations)
    ids = torch.zeros((len(batch), width), dtype=torch.long)  # (G, C)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (G, C)
    for g, (context, _) in enumerate(batch):
        ids[g, width - len(context) :] = torch.as_tensor(context)
        mask[g, width - len(context) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = model.new_cache(len(batch), width + longest - 1)
    logits = model(ids, kv_cache=cache, attention_mask=mask, num_logits=1)[:, -1]  # (G, V)
    first = torch.log_softmax(logits.float(), dim=-1).cpu()  # (G, V)
    owner = torch.tensor([g for g, (_, indices) in enumerate(batch) for _ in indices])  # (R,)
    rest = None
    if longest > 1:
        tails = torch.zeros((len(continuations), longest - 1), dtype=torch.long)  # (R, M-1)
        for r, continuation in enumerate(continuations):
            tails[r, : len(continuation) - 1] = torch.as_tensor(continuation[:-1])
        cache.reorder(owner.to(device))
        full_mask = torch.cat([mask[owner.to(device)], torch.ones_like(tails, device=device)], dim=1)  # (R, C+M-1)
        logits = model(tails.to(device), kv_cache=cache, attention_mask=full_mask)  # (R, M-1, V)
        rest = torch.log_softmax(logits.float(), dim=-1).cpu()  # (R, M-1, V)
    flat = [i for _, indices in batch for i in indices]
    for r, (i, continuation) in enumerate(zip(flat, continuations)):
        steps = first[owner[r]][None]  # (1, V)
        if len(continuation) > 1:
            steps = torch.cat([steps, rest[r, : len(continuation) - 1]])  # (m, V)
        target = torch.as_tensor(continuation)
        total = float(steps.gather(-1, target[:, None]).sum())
        results[i] = (total, bool((steps.argmax(-1) == target).all()))


def generate_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    stops: Sequence[str] = ("\n",),
    max_new_tokens: int = 16,
    num_beams: int = 1,
    batch_size: int = 32,
    truncate: bool = False,
) -> list[str]:
    """Greedy (num_beams 1) or beam continuations of prompts, cut before the first stop string; with
    truncate, a prompt too long for the model keeps its newest tokens (else it is refused)."""
    encoded = [tokenizer.encode(p) or [prefix_id(tokenizer)] for p in prompts]
    if truncate:
        encoded = [ids[-(model.config.block_size - 1) :] for ids in encoded]
    config = GenerationConfig(
        strategy="greedy" if num_beams == 1 else "beam",
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        stop=list(stops),
    )
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), encoded[i]))
    texts = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out = generate(
            model,
            [encoded[i] for i in chunk],
            config,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            should_stop=stop_checker(tokenizer, list(stops)) if num_beams == 1 else None,
        )
        rows = out.generated()
        per_prompt = max(len(rows) // len(chunk), 1)
        for r, i in enumerate(chunk):
            texts[i] = cut_at_stop(tokenizer.decode(rows[r * per_prompt]), list(stops))
    return texts


def item_choices(task: Task, index: int, distractors: int = 3) -> list[str]:
    """The item's own choices, or (generation-only tasks) its output plus the outputs of the next items."""
    item = task.queries[index]
    if item.choices:
        return item.choices
    others: list[str] = []
    for step in range(1, len(task.queries)):
        output = task.queries[(index + step) % len(task.queries)].output
        if output != item.output and output not in others:
            others.append(output)
        if len(others) == distractors:
            break
    return sorted([item.output, *others])


def _summary(correct: list[int]) -> dict:
    n, hits = len(correct), sum(correct)
    return {"n": n, "correct": hits, "accuracy": hits / n if n else 0.0, "ci": list(wilson_interval(hits, n))}


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    shots: int,
    *,
    scoring: str = "generate",
    limit: int | None = None,
    num_beams: int = 1,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> dict:
    """Accuracy of one task at one number of shots, with its interval, predictions and per-item hits."""
    queries = task.queries[:limit] if limit else task.queries
    prompts = fitting_prompts(model, tokenizer, task, shots, limit)
    if scoring == "generate":
        texts = generate_texts(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size
        )
        predictions = [t.strip() for t in texts]
        correct = [int(p == item.output) for p, item in zip(predictions, queries)]
        return {**_summary(correct), "predictions": predictions, "hits": correct}
    choices = [item_choices(task, i) for i in range(len(queries))]
    pairs = [
        encode_pair(tokenizer, prompt, " " + option) for prompt, options in zip(prompts, choices) for option in options
    ]
    scores = iter(continuation_logprobs(model, pairs, batch_size=batch_size))
    predictions, correct, correct_norm = [], [], []
    for item, options in zip(queries, choices):
        sums = [next(scores)[0] for _ in options]
        normed = [s / max(len(o.encode("utf-8")), 1) for s, o in zip(sums, options)]
        best, best_norm = options[_argmax(sums)], options[_argmax(normed)]
        predictions.append(best)
        correct.append(int(best == item.output))
        correct_norm.append(int(best_norm == item.output))
    norm = _summary(correct_norm)
    return {
        **_summary(correct),
        "acc_norm": norm["accuracy"],
        "acc_norm_ci": norm["ci"],
        "predictions": predictions,
        "hits": correct,
        "hits_norm": correct_norm,
    }


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def run_icl(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    tasks: Sequence[str] | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS,
    scoring: str = "generate",
    limit: int | None = None,
    *,
    num_beams: int = 1,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy per task and number of shots: {"tasks": {name: {"by_shots": {k: {accuracy, ci, n, ...}}}}}."""
    if scoring not in SCORINGS:
        raise ArlmError(f"unknown ICL scoring {scoring!r}; use generate or loglikelihood")
    if any(k < 0 for k in shots):
        raise ArlmError(f"numbers of shots must be >= 0, got {list(shots)}")
    if limit is not None and limit < 1:
        raise ArlmError(f"limit must be >= 1, got {limit}")
    shots = list(dict.fromkeys(shots))  # each number once, in the order given
    loaded = [load_task(name) for name in (tasks or builtin_task_names())]
    names = [task.name for task in loaded]
    if len(set(names)) < len(names):  # (the results are keyed by name: one would replace the other)
        twice = next(n for n in names if names.count(n) > 1)
        raise ArlmError(f"two tasks are named {twice} (a task is named by its file's stem): rename one of the files")
    for task in loaded:  # before any work: a task with too few demonstrations for the most shots asked
        if len(task.demos) < max(shots, default=0):
            raise ArlmError(f"task {task.name} has {len(task.demos)} demonstrations; {max(shots)} shots were asked for")
        for k in shots:  # and every prompt built and measured against the context (tokenizing is cheap)
            fitting_prompts(model, tokenizer, task, k, limit)
    settings = {"scoring": scoring, "limit": limit, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    settings["batch_size"] = batch_size
    start = time.perf_counter()
    results: dict = {"scoring": scoring, "shots": list(shots), "limit": limit, "tasks": {}}
    for task in loaded:
        entry = {"description": task.description, "multiple_choice": task.multiple_choice, "by_shots": {}}
        for k in shots:
            begun = time.perf_counter()
            entry["by_shots"][k] = evaluate_task(model, tokenizer, task, k, **settings)
            if log:
                row = entry["by_shots"][k]
                log(f"{task.name} k={k}: {format_cell(row)} ({time.perf_counter() - begun:.1f}s)")
        results["tasks"][task.name] = entry
    results["seconds"] = time.perf_counter() - start
    return results


def format_cell(row: dict, key: str = "accuracy") -> str:
    """'0.62 [0.50, 0.73]' for an accuracy and its interval."""
    low, high = row["ci"] if key == "accuracy" else row[f"{key}_ci"]
    return f"{row[key]:.2f} [{low:.2f}, {high:.2f}]"


def format_table(results: dict, key: str = "accuracy") -> str:
    """A markdown table: one row per task, one column per number of shots, accuracy [95% interval]."""
    shots = results["shots"]
    lines = ["| task | n | " + " | ".join(f"k={k}" for k in shots) + " |", "|---|---|" + "---|" * len(shots)]
    for name, entry in results["tasks"].items():
        rows = entry["by_shots"]
        if key != "accuracy" and key not in rows[shots[0]]:
            continue
        cells = [format_cell(rows[k], key) for k in shots]
        lines.append(f"| {name} | {rows[shots[0]]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
