"""In-context learning: task files, prompt format, scoring, intervals; a small SmolLM2 run."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from arlm.config import ModelConfig, RunConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.errors import ArlmError
from arlm.evaluation import icl
from arlm.interop.checkpoint import export_weights, save_checkpoint
from arlm.model.transformer import Transformer

MULTIPLE_CHOICE = {"capitals", "antonyms"}
IRREGULAR_PLURALS = {"child": "children", "mouse": "mice", "tooth": "teeth", "person": "people", "sheep": "sheep"}


def task_texts() -> list[str]:
    """Every string of the built-in tasks, for a character vocabulary that covers them."""
    texts = []
    for name in icl.builtin_task_names():
        task = icl.load_task(name)
        texts.append(task.description)
        texts += [f"{i.input} => {i.output}\n{' '.join(i.choices or [])}" for i in task.queries + task.demos]
    return texts


@pytest.fixture(scope="module")
def tiny():
    """(random tiny model, character tokenizer over the task texts)."""
    torch.manual_seed(0)
    tokenizer = VocabTokenizer.train("char", task_texts(), 0)
    config = ModelConfig(
        flavour="llama", vocab_size=tokenizer.vocab_size, block_size=512, n_layer=2, n_head=2, d_model=32
    )
    return Transformer(config).eval(), tokenizer


def write_task(path, items, description="Do it."):
    path.write_text("\n".join(json.dumps(x) for x in [{"description": description}, *items]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", icl.builtin_task_names())
def test_builtin_task_files_are_complete_and_consistent(name):
    task = icl.load_task(name)
    assert len(task.queries) >= 60 and len(task.demos) >= 8
    inputs = [i.input for i in task.queries + task.demos]
    assert len(set(inputs)) == len(inputs), "duplicate inputs"
    assert all(i.input.strip() and i.output.strip() and "\n" not in i.input + i.output for i in task.queries)
    assert task.multiple_choice == (name in MULTIPLE_CHOICE)
    for item in task.queries + task.demos:
        if name in MULTIPLE_CHOICE:
            assert len(item.choices) == 4 and len(set(item.choices)) == 4 and item.output in item.choices
            # ASCII choices: acc_norm per UTF-8 byte equals lm-eval's acc_norm per character
            assert all(c.isascii() for c in item.choices)
        else:
            assert item.choices is None
    if name in MULTIPLE_CHOICE:  # the answer is not always in the same place
        assert len({i.choices.index(i.output) for i in task.queries}) == 4


def test_generated_tasks_are_correct():
    for item in (lambda t: t.queries + t.demos)(icl.load_task("reverse")):
        assert item.output == item.input[::-1] != item.input
    for item in (lambda t: t.queries + t.demos)(icl.load_task("addition")):
        a, b = item.input.split(" + ")
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99 and item.output == str(int(a) + int(b))
    plurals = {i.input: i.output for i in icl.load_task("plurals").queries + icl.load_task("plurals").demos}
    assert IRREGULAR_PLURALS.items() <= plurals.items()


def test_prompt_format_is_exact(tmp_path):
    items = [
        {"input": "a", "output": "A", "split": "demo"},
        {"input": "b", "output": "B", "split": "demo"},
        {"input": "c", "output": "C", "split": "demo"},
        {"input": "x", "output": "X"},
    ]
    task = icl.load_task(write_task(tmp_path / "up.jsonl", items, "Uppercase."))
    assert icl.build_prompt(task, task.queries[0], 0) == "Uppercase.\nx =>"
    assert icl.build_prompt(task, task.queries[0], 1) == "Uppercase.\na => A\nx =>"
    assert icl.build_prompt(task, task.queries[0], 3) == "Uppercase.\na => A\nb => B\nc => C\nx =>"
    with pytest.raises(ArlmError, match="3 demonstrations"):
        icl.build_prompt(task, task.queries[0], 4)


def test_task_texts_may_hold_unicode_line_separators(tmp_path):
    items = [{"input": "a\u2028b", "output": "c\u2029d"}]
    path = tmp_path / "ls.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in [{"description": "D."}, *items]) + "\n")
    assert [(i.input, i.output) for i in icl.load_task(path).queries] == [("a\u2028b", "c\u2029d")]


def test_demonstrations_never_include_the_query(tmp_path):
    items = [{"input": "a", "output": "A", "split": "demo"}, {"input": "b", "output": "B", "split": "demo"}]
    task = icl.load_task(write_task(tmp_path / "t.jsonl", [*items, {"input": "a", "output": "A"}]))
    assert icl.build_prompt(task, task.queries[0], 1) == "Do it.\nb => B\na =>"
    for name in icl.builtin_task_names():
        task = icl.load_task(name)
        for query in task.queries:
            lines = icl.build_prompt(task, query, 8).split("\n")
            assert len(lines) == 10 and lines[-1] == f"{query.input} =>"
            assert all(not line.startswith(f"{query.input} =>") for line in lines[1:-1])


def test_task_file_errors(tmp_path):
    with pytest.raises(ArlmError, match="unknown ICL task"):
        icl.load_task("no_such_task")
    with pytest.raises(ArlmError, match="not among its choices"):
        icl.load_task(write_task(tmp_path / "c.jsonl", [{"input": "a", "output": "z", "choices": ["a", "b"]}]))
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(ArlmError, match="description"):
        icl.load_task(bad)


def test_wilson_interval_against_hand_computed_values():
    # 8/10: p=0.8, z^2/n=0.38416; centre 0.99208/1.38416, half 1.96/1.38416*sqrt(0.016+0.009604)
    low, high = icl.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = icl.wilson_interval(5, 10)
    assert low + high == pytest.approx(1.0) and low == pytest.approx(0.2366, abs=1e-4)
    assert icl.wilson_interval(0, 10)[0] == 0.0 and icl.wilson_interval(10, 10)[1] == 1.0
    assert icl.wilson_interval(0, 0) == (0.0, 1.0)
    for n in range(1, 201):  # the interval holds the proportion (70/70's upper end was 0.9999999999999999)
        assert icl.wilson_interval(n, n)[1] == 1.0 and icl.wilson_interval(0, n)[0] == 0.0


def test_two_tasks_of_one_name_are_refused_before_any_scoring(tiny, tmp_path):
    """Results are keyed by task name: the built-in capitals' were replaced by a file's named capitals too."""
    model, tokenizer = tiny
    path = write_task(
        tmp_path / "capitals.jsonl", [{"input": "a", "output": "A", "split": "demo"}, {"input": "b", "output": "B"}]
    )
    with pytest.raises(ArlmError, match="two tasks are named capitals"):
        icl.run_icl(model, tokenizer, ["capitals", str(path)], (0,))


def test_continuation_logprob_is_the_sum_of_per_token_logprobs(tiny):
    model, tokenizer = tiny
    context, continuation = icl.encode_pair(tokenizer, "Give the capital.\nFrance =>", " Paris")
    assert continuation == tokenizer.encode(" Paris")
    ((total, greedy),) = icl.continuation_logprobs(model, [(context, continuation)])
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids)[0, :-1].float(), dim=-1)  # (T-1, V)
    targets = ids[0, 1:]
    expected = logprobs[torch.arange(len(targets)), targets][-len(continuation) :].sum()
    assert total == pytest.approx(float(expected), abs=1e-4)
    assert greedy == (logprobs[-len(continuation) :].argmax(-1).tolist() == continuation)
    greedy_ids = list(context)
    with torch.no_grad():
        for _ in range(3):  # a greedy continuation, one token at a time
            greedy_ids.append(int(model(torch.tensor([greedy_ids]))[0, -1].argmax()))
    wrong = greedy_ids[-3:-1] + [(greedy_ids[-1] + 1) % tokenizer.vocab_size]
    scored = icl.continuation_logprobs(model, [(context, greedy_ids[-3:]), (context, wrong)])
    assert [g for _, g in scored] == [True, False]


def test_batched_scoring_equals_unbatched(tiny):
    model, tokenizer = tiny
    task = icl.load_task("capitals")
    pairs = [
        icl.encode_pair(tokenizer, icl.build_prompt(task, item, k), " " + choice)
        for k, item in zip((0, 1, 2, 3), task.queries)
        for choice in item.choices
    ]
    one = icl.continuation_logprobs(model, pairs, batch_size=1)
    many = icl.continuation_logprobs(model, pairs, batch_size=7)
    assert [g for _, g in one] == [g for _, g in many]
    assert torch.allclose(torch.tensor([s for s, _ in one]), torch.tensor([s for s, _ in many]), atol=1e-4)


def test_encode_pair_moves_trailing_space_and_handles_empty_context(tiny):
    _, tokenizer = tiny
    assert icl.encode_pair(tokenizer, "ab ", "c") == (tokenizer.encode("ab"), tokenizer.encode(" c"))
    assert icl.encode_pair(tokenizer, "", "c") == ([icl.prefix_id(tokenizer)], tokenizer.encode("c"))


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    task = icl.load_task("plurals")
    prompts = [icl.build_prompt(task, item, k) for k, item in zip((0, 1, 2, 4, 8), task.queries)]
    batched = icl.generate_texts(model, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    single = [icl.generate_texts(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single and all("\n" not in t for t in batched)
    beam = icl.generate_texts(model, tokenizer, prompts[:2], max_new_tokens=4, num_beams=3)
    assert len(beam) == 2 and all(isinstance(t, str) and "\n" not in t for t in beam)


@pytest.mark.parametrize("scoring", icl.SCORINGS)
def test_run_icl_reports_accuracies_with_intervals(tiny, scoring):
    model, tokenizer = tiny
    results = icl.run_icl(model, tokenizer, ["capitals", "reverse"], (0, 2), scoring, limit=6, max_new_tokens=4)
    assert list(results["tasks"]) == ["capitals", "reverse"] and results["shots"] == [0, 2]
    for entry in results["tasks"].values():
        for row in entry["by_shots"].values():
            assert row["n"] == 6 and 0.0 <= row["accuracy"] <= 1.0 and len(row["predictions"]) == 6
            assert row["accuracy"] == sum(row["hits"]) / 6
            assert row["ci"][0] <= row["accuracy"] <= row["ci"][1]
            assert ("acc_norm" in row) == (scoring == "loglikelihood")
    table = icl.format_table(results)
    assert table.count("\n") == 3 and "| capitals | 6 |" in table


def test_loglikelihood_choices_of_generation_tasks_come_from_other_items():
    task = icl.load_task("plurals")
    choices = icl.item_choices(task, 0)
    assert len(choices) == 4 and task.queries[0].output in choices
    assert set(choices) - {task.queries[0].output} <= {i.output for i in task.queries[1:]}


def test_run_icl_refuses_bad_arguments(tiny):
    model, tokenizer = tiny
    with pytest.raises(ArlmError, match="scoring"):
        icl.run_icl(model, tokenizer, ["capitals"], (0,), "bleu")
    with pytest.raises(ArlmError, match="demonstrations"):
        icl.run_icl(model, tokenizer, ["capitals"], (9,), limit=1)
    calls = []
    with pytest.MonkeyPatch.context() as patch:  # refused before any number of shots runs
        patch.setattr(icl, "evaluate_task", lambda *a, **k: calls.append(a))
        with pytest.raises(ArlmError, match="has 8 demonstrations; 9 shots"):
            icl.run_icl(model, tokenizer, ["capitals"], (0, 9), limit=1)
    assert calls == []
    assert icl.run_icl(model, tokenizer, ["capitals"], (0, 0), limit=1, max_new_tokens=2)["shots"] == [0]
    short = Transformer(
        ModelConfig(flavour="llama", vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16)
    )
    with pytest.raises(ArlmError, match="context"):
        icl.run_icl(short, tokenizer, ["capitals"], (4,), limit=1)
    short.config.block_size = 80  # (k = 0's prompt fits, k = 4's does not)
    with pytest.MonkeyPatch.context() as patch:  # a prompt too long for the context: refused before k = 0 runs
        patch.setattr(icl, "evaluate_task", lambda *a, **k: calls.append(a))
        with pytest.raises(ArlmError, match="capitals with 4 shots needs prompts of"):
            icl.run_icl(short, tokenizer, ["capitals"], (0, 4), limit=1)
    assert calls == []


def test_too_few_demonstrations_besides_the_query_are_refused_before_any_scoring(tiny, tmp_path):
    """Two demonstrations, one of them the first query: 2 shots cannot be built for it (the count named is the
    query's own, and why)."""
    model, tokenizer = tiny
    items = [{"input": "a", "output": "A", "split": "demo"}, {"input": "b", "output": "B", "split": "demo"}]
    path = write_task(tmp_path / "t.jsonl", [*items, {"input": "a", "output": "A"}, {"input": "c", "output": "C"}])
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(icl, "evaluate_task", lambda *a, **k: calls.append(a))
        with pytest.raises(ArlmError, match="has 1 demonstrations besides the query 'a' .* 2 shots were asked"):
            icl.run_icl(model, tokenizer, [str(path)], (0, 1, 2))
    assert calls == []


def save_tiny_checkpoint(model: Transformer, tokenizer, path):
    """A checkpoint folder that load_model accepts."""
    return save_checkpoint(
        path,
        weights=export_weights(model.state_dict(), model.config),
        tokenizer=tokenizer,
        config=RunConfig(model=model.config),
        meta={"step": 0},
    )


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_learns_from_demonstrations(smollm2):
    from arlm.model.inference import optimize_for_decoding

    # A copy in the CPU decoding layout (about 2x faster), leaving the shared session fixture untouched.
    model, tokenizer = optimize_for_decoding(copy.deepcopy(smollm2.model).eval()), smollm2.tokenizer
    # Answers are one or two tokens; 6 new tokens bound the time spent on rambling zero-shot rows.
    results = icl.run_icl(model, tokenizer, ["capitals", "antonyms"], (0, 4), limit=20, max_new_tokens=6)
    gains = []
    for entry in results["tasks"].values():
        zero, four = entry["by_shots"][0], entry["by_shots"][4]
        assert all("\n" not in p for p in zero["predictions"] + four["predictions"])
        gains.append(four["accuracy"] - zero["accuracy"])
    # Measured on these 20 items: capitals 0.00 -> 0.85, antonyms 0.55 -> 0.90 (all items: docs/icl.md).
    assert max(gains) > 0


def test_a_broken_task_file_names_the_line_of_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"description": "d"}\n\n{"input": "a", "output": "b"}\n{"input": "c"\n[1]\n')
    with pytest.raises(
        ArlmError, match=r"broken.jsonl line 4 is not valid JSON \(Expecting ',' delimiter, column 14\)"
    ):
        icl.load_task(path)
    path.write_text('{"description": "d"}\n[1]\n')
    with pytest.raises(ArlmError, match="line 2: each line is a JSON object, got list"):
        icl.load_task(path)
