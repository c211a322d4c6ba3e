"""lm-evaluation-harness as a client of the server (its local-completions model, remote tokenizer): the accuracies it
computes from the served log-probabilities and greedy continuations equal run_icl's on the same model and items."""

import os

import pytest

from tests.serving.conftest import MODEL_ID

if os.environ.get("CI", "").lower() not in ("1", "true"):  # in CI a missing lm_eval must fail, not skip
    pytest.importorskip("lm_eval")

from arlm.evaluation.lm_eval_adapter import evaluate_with_lm_eval, write_task_yamls
from tests.evaluation.test_lm_eval_adapter import assert_same_as_run_icl

pytestmark = pytest.mark.hf
TASKS = ("capitals", "antonyms", "addition")  # two multiple-choice (loglikelihood), one generated (generate_until)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4])  # 4: lists of prompts in one request
def test_lm_eval_through_the_server_equals_run_icl(live, tmp_path, batch_size):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    write_task_yamls(tmp_path, list(TASKS), max_gen_toks=6)
    client = LocalCompletionsAPI(
        base_url=live.base_url + "/v1/completions",
        model=MODEL_ID,
        tokenizer_backend="auto",  # finds /tokenizer_info and /tokenize: the served tokenizer, token ids sent
        batch_size=batch_size,
        max_retries=1,
        timeout=120,
    )
    assert client.tokenizer_backend == "remote"
    results = evaluate_with_lm_eval(client, [f"arlm_{n}" for n in TASKS], tmp_path, num_fewshot=2, limit=8,
                                    log_samples=True)  # fmt: skip
    for name in TASKS:
        assert_same_as_run_icl(results, live.lm.model, live.lm.tokenizer, name, 2, 8)
