"""lm-evaluation-harness through our adapter: same prompts and same accuracies as run_icl, fully offline."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from arlm.evaluation import icl
from arlm.evaluation.perplexity import sliding_window
from tests.evaluation.test_icl import save_tiny_checkpoint, task_texts, tiny  # noqa: F401  (the module fixture)
from tests.helpers import REPO

if os.environ.get("CI", "").lower() not in ("1", "true"):  # in CI a missing lm_eval must fail, not skip
    pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from arlm.evaluation.lm_eval_adapter import (
    ArlmLM,
    evaluate_with_lm_eval,
    write_task_yamls,
)

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """lm-eval YAMLs of every built-in task."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    write_task_yamls(folder, max_gen_toks=6)
    return folder


def lm_eval_run(lm, task_dir, names, shots, limit):
    return evaluate_with_lm_eval(
        lm, [f"arlm_{n}" for n in names], task_dir, num_fewshot=shots, limit=limit, log_samples=True
    )


def assert_same_as_run_icl(results, model, tokenizer, name, shots, limit, max_new_tokens=6):
    """lm-eval's metrics for one task equal run_icl's accuracies on the same items and shots."""
    metrics = results["results"][f"arlm_{name}"]
    task = icl.load_task(name)
    if task.multiple_choice:
        ours = icl.run_icl(model, tokenizer, [name], (shots,), "loglikelihood", limit)["tasks"][name]["by_shots"][shots]
        assert metrics["acc,none"] == pytest.approx(ours["accuracy"])
        assert metrics["acc_norm,none"] == pytest.approx(ours["acc_norm"])
        return ours
    ours = icl.run_icl(model, tokenizer, [name], (shots,), "generate", limit, max_new_tokens=max_new_tokens)
    ours = ours["tasks"][name]["by_shots"][shots]
    assert float(metrics["exact_match,none"]) == pytest.approx(ours["accuracy"])
    samples = sorted(results["samples"][f"arlm_{name}"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0].strip() for s in samples] == ours["predictions"]
    return ours


def test_lm_eval_prompts_are_byte_identical_to_ours(tiny, task_dir):  # noqa: F811
    model, tokenizer = tiny
    lm = ArlmLM.from_loaded(model, tokenizer)
    for shots in (0, 8):
        results = lm_eval_run(lm, task_dir, icl.builtin_task_names(), shots, limit=3)
        for name in icl.builtin_task_names():
            task = icl.load_task(name)
            for sample in results["samples"][f"arlm_{name}"]:
                query = task.queries[sample["doc_id"]]
                contexts = {args[0] for args in sample["arguments"]}
                assert contexts == {icl.build_prompt(task, query, shots)}
                if task.multiple_choice:
                    assert [args[1] for args in sample["arguments"]] == [" " + c for c in query.choices]
                else:
                    assert sample["arguments"][0][1]["until"] == ["\n"]


def test_tiny_model_lm_eval_accuracy_equals_run_icl(tiny, task_dir):  # noqa: F811
    model, tokenizer = tiny
    lm = ArlmLM.from_loaded(model, tokenizer)
    results = lm_eval_run(lm, task_dir, ["capitals", "antonyms", "addition"], 2, limit=10)
    for name in ("capitals", "antonyms", "addition"):
        assert_same_as_run_icl(results, model, tokenizer, name, 2, 10)


@pytest.mark.slow
def test_lm_eval_cli_entry_point(tiny, tmp_path):  # noqa: F811
    model, tokenizer = tiny
    checkpoint = save_tiny_checkpoint(model, tokenizer, tmp_path / "ckpt")
    write_task_yamls(tmp_path / "tasks", ["antonyms"])
    command = [
        sys.executable, "-m", "arlm.evaluation.lm_eval_adapter", "--model", "arlm",
        "--model_args", f"model={checkpoint},device=cpu", "--tasks", "arlm_antonyms",
        "--include_path", str(tmp_path / "tasks"), "--num_fewshot", "2", "--limit", "3",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "arlm_antonyms" in done.stdout and "acc_norm" in done.stdout


def test_loglikelihood_rolling_matches_sliding_window_perplexity(tiny):  # noqa: F811
    model, tokenizer = tiny
    text = "\n".join(task_texts())[:700]
    lm = ArlmLM.from_loaded(model, tokenizer, rolling_stride=200)
    (total,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    ids = torch.tensor([icl.prefix_id(tokenizer), *tokenizer.encode(text)])
    reference = sliding_window(model, ids, context=model.config.block_size, stride=200)
    assert total == pytest.approx(-reference.loss * reference.tokens, rel=1e-5)
    assert reference.tokens == len(ids) - 1 and len(ids) > model.config.block_size


def test_generate_until_stops_at_strings_and_token_budget(tiny):  # noqa: F811
    model, tokenizer = tiny
    lm = ArlmLM.from_loaded(model, tokenizer)
    prompts = ["Give the opposite of each word.\nhot =>", "Spell each word backwards.\ncat =>"]
    free = icl.generate_texts(model, tokenizer, prompts, stops=(), max_new_tokens=8)
    stop = free[0][3] if len(free[0]) > 3 else "\n"
    requests = [SimpleNamespace(args=(p, {"until": [stop], "max_gen_toks": 8})) for p in prompts]
    requests.append(SimpleNamespace(args=(prompts[1], {"until": "zzz", "max_gen_toks": 2})))
    out = lm.generate_until(requests)
    assert out[0] == free[0].split(stop)[0] and stop not in out[0]
    assert out[1] == free[1].split(stop)[0]
    assert len(tokenizer.encode(out[2])) <= 2 and free[1].startswith(out[2])


@pytest.mark.real_model
def test_smollm2_lm_eval_accuracy_equals_run_icl(smollm2, task_dir):
    model, tokenizer = smollm2.model.eval(), smollm2.tokenizer
    lm = ArlmLM.from_loaded(model, tokenizer)
    results = lm_eval_run(lm, task_dir, ["capitals", "plurals"], 2, limit=6)
    capitals = assert_same_as_run_icl(results, model, tokenizer, "capitals", 2, 6)
    plurals = assert_same_as_run_icl(results, model, tokenizer, "plurals", 2, 6)
    assert capitals["accuracy"] > 0.5 and plurals["accuracy"] > 0.5  # a real model, not noise (measured 1.0 / 1.0)


def test_the_model_is_loaded_at_the_dtype_asked(tiny, tmp_path):  # noqa: F811
    """`eval icl --lm-eval` accepted --dtype auto and loaded float32 where arlm's own evaluation loads a GGUF file at
    its own precision (int4 for SmolLM2): lm-eval's model_args take dtype, passed through."""
    checkpoint = save_tiny_checkpoint(*tiny, tmp_path / "ckpt")
    int8 = ArlmLM.create_from_arg_string(f"model={checkpoint},device=cpu,dtype=int8")
    assert "Int8Linear" in {type(m).__name__ for m in int8.model.modules()}
    plain = ArlmLM.create_from_arg_string(f"model={checkpoint},device=cpu")  # auto: an arlm checkpoint's float32
    assert "Int8Linear" not in {type(m).__name__ for m in plain.model.modules()}


def test_unknown_model_args_are_refused():
    from arlm.errors import ArlmError

    with pytest.raises(ArlmError, match="unknown lm-eval model_args"):
        ArlmLM.create_from_arg_string("modle=smollm2,device=cpu")


def test_lm_eval_model_args_pick_the_device_as_every_verb_does(monkeypatch):
    """lm-eval's own command line with model_args dtype=int4 on a CUDA machine loads on the CPU (int4's kernels are
    the CPU's), as `--device auto` does in every arlm verb."""
    import arlm.evaluation.lm_eval_adapter as adapter

    class Stop(Exception):
        pass

    def load(model, device, dtype):
        raise Stop(str(device), dtype)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(adapter, "load_model", load)
    with pytest.raises(Stop) as stopped:
        ArlmLM(model="smollm2", dtype="int4")
    assert stopped.value.args == ("cpu", "int4")
