"""EleutherAI's lm-evaluation-harness (lm_eval 0.4.x) running arlm models, fully offline.

Importing this module registers the model type "arlm" with lm-eval. Three ways in:

- Python: `run_lm_eval("smollm2", "capitals", num_fewshot=4, limit=20)` writes lm-eval YAMLs for the
  built-in tasks (or takes a task YAML file or a folder of them) and runs lm-eval's `simple_evaluate`
  (`arlm eval icl --lm-eval` prints its table).
- lm-eval's own CLI, through this module so that "arlm" is registered first:
  `python -m arlm.evaluation.lm_eval_adapter --model arlm --model_args model=smollm2,device=cpu
  --tasks arlm_capitals --include_path DIR --num_fewshot 4` (DIR from `write_task_yamls(DIR)`).
- Any LM-taking lm-eval API: `ArlmLM(model="smollm2")` or `ArlmLM.from_loaded(model, tokenizer)`.

The YAMLs reproduce arlm.evaluation.icl's prompts byte for byte (description line, `input => output`
demonstrations from the demo split in file order, `query =>`), and the model scores requests with the same
functions as run_icl, so both report the same accuracies on the same items.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from arlm.data.tokenizers import Tokenizer
from arlm.errors import ArlmError
from arlm.evaluation.icl import (
    builtin_task_names,
    continuation_logprobs,
    encode_pair,
    generate_texts,
    load_task,
    prefix_id,
)
from arlm.evaluation.perplexity import sliding_windows
from arlm.interop.loading import load_model, pick_device
from arlm.model.inference import optimize_for_decoding

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import make_table, simple_parse_args_string
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ArlmError("the lm-eval adapter needs lm-evaluation-harness: pip install 'arlm[lm-eval]'") from error

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

TASK_PREFIX = "arlm_"  # lm-eval task names of the built-in tasks: arlm_capitals, ...
MAX_GEN_TOKS = 16  # answers are one short line


@register_model("arlm")
class ArlmLM(LM):
    """An arlm model reference (checkpoint, run folder, HF folder, .gguf or 'smollm2') as an lm-eval LM."""

    def __init__(
        self,
        model: str = "smollm2",
        device: str = "auto",
        batch_size: int | str | None = 32,
        max_batch_size: int | None = None,  # (lm-eval's runner passes it; batches are batch_size here)
        rolling_stride: int = 0,
        dtype: str = "auto",
        **unknown: object,
    ) -> None:
        """Load `model` at `dtype` (auto: a GGUF file at its own precision, as every arlm verb loads it)."""
        if unknown:
            raise ArlmError(
                f"unknown lm-eval model_args {sorted(unknown)} for arlm; use model, device, batch_size, "
                "rolling_stride, dtype"
            )
        super().__init__()
        loaded = load_model(model, device=pick_device(str(device), str(dtype)), dtype=str(dtype))
        optimize_for_decoding(loaded.model)
        self._setup(loaded.model, loaded.tokenizer, batch_size, rolling_stride)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> ArlmLM:
        """lm-eval's constructor hook; model_args win over the runner's batch_size/device settings."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ArlmLM:
        """From "model=smollm2,device=cpu,batch_size=32" (lm-eval's --model_args)."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def from_loaded(
        cls, model: torch.nn.Module, tokenizer: Tokenizer, *, batch_size: int = 32, rolling_stride: int = 0
    ) -> ArlmLM:
        """Wrap a model already in memory (used as is: not moved, not re-laid out)."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._setup(model.eval(), tokenizer, batch_size, rolling_stride)
        return lm

    def _setup(
        self, model: torch.nn.Module, tokenizer: Tokenizer, batch_size: int | str | None, rolling_stride: int
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() else 32  # "auto" -> 32
        block = model.config.block_size
        self.rolling_stride = rolling_stride or max(block // 2, 1)

    @property
    def tokenizer_name(self) -> str:
        """A name for lm-eval's caches and logs."""
        return f"arlm-{self.tokenizer.kind}-{self.tokenizer.fingerprint()}"

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation, whether greedy decoding produces it) per (context, continuation)."""
        pairs = [encode_pair(self.tokenizer, *request.args[:2]) for request in requests]
        return continuation_logprobs(self.model, pairs, batch_size=self.batch_size)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (after a prefix id), by windows of the model's context moved by
        rolling_stride; every token is scored once, with at least block - stride tokens of history."""
        block = self.model.config.block_size
        totals = []
        for request in requests:
            ids = [prefix_id(self.tokenizer), *self.tokenizer.encode(request.args[0])]
            if len(ids) < 2:
                totals.append(0.0)
                continue
            pairs = []
            for begin, end, skip in sliding_windows(len(ids), block, self.rolling_stride):
                pairs.append((ids[begin : begin + 1 + skip], ids[begin + 1 + skip : end + 1]))
            totals.append(sum(s for s, _ in continuation_logprobs(self.model, pairs, batch_size=self.batch_size)))
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations cut before the first `until` string (or EOS), at most max_gen_toks tokens."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            kwargs = dict(request.args[1]) if len(request.args) > 1 else {}
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            groups.setdefault((tuple(until), int(kwargs.get("max_gen_toks", MAX_GEN_TOKS))), []).append(i)
        out = [""] * len(requests)
        for (until, max_tokens), indices in groups.items():
            texts = generate_texts(
                self.model,
                self.tokenizer,
                [requests[i].args[0] for i in indices],
                stops=until,
                max_new_tokens=max_tokens,
                batch_size=self.batch_size,
                truncate=True,
            )
            for i, text in zip(indices, texts):
                out[i] = text
        return out


def write_task_yamls(
    out_dir: str | Path, tasks: Sequence[str] | None = None, *, max_gen_toks: int = MAX_GEN_TOKS
) -> list[str]:
    """Write an lm-eval task YAML (plus its test and demo JSONL files) per ICL task; returns the task names.

    Multiple-choice tasks score acc and acc_norm, the others generate until a newline and score exact match.
    lm-eval builds a prompt as description + (doc_to_text + target_delimiter + target + fewshot_delimiter)
    per demonstration + doc_to_text, so the description carries its own newline."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for reference in tasks or builtin_task_names():
        task = load_task(reference)
        name = TASK_PREFIX + task.name
        files = {}
        for split, items in (("test", task.queries), ("demo", task.demos)):
            path = (out / f"{task.name}.{split}.jsonl").resolve()
            rows = [
                {"input": i.input, "output": i.output, **({"choices": i.choices} if i.choices else {})} for i in items
            ]
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            files[split] = str(path)
        config: dict = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": files},
            "test_split": "test",
            "fewshot_split": "demo",
            "fewshot_config": {"sampler": "first_n"},
            "description": task.description + "\n",
            "doc_to_text": "{{input}} =>",
            "doc_to_target": "output",
            "target_delimiter": " ",
            "fewshot_delimiter": "\n",
            "metadata": {"version": 1.0},
        }
        if task.multiple_choice:
            config["output_type"] = "multiple_choice"
            config["doc_to_choice"] = "choices"
            config["metric_list"] = [_metric("acc"), _metric("acc_norm")]
        else:
            config["output_type"] = "generate_until"
            config["generation_kwargs"] = {"until": ["\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
            config["metric_list"] = [{**_metric("exact_match"), "regexes_to_ignore": ["^\\s+", "\\s+$"]}]
        (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        names.append(name)
    return names


def _metric(name: str) -> dict:
    return {"metric": name, "aggregation": "mean", "higher_is_better": True}


def evaluate_with_lm_eval(
    model: str | LM,
    tasks: Sequence[str],
    include_path: str | Path,
    *,
    num_fewshot: int = 0,
    limit: int | None = None,
    model_args: str = "",
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
) -> dict:
    """lm-eval's simple_evaluate on the tasks found under include_path (no built-in lm-eval tasks, no network)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate  # lazy: optional dependency (the evaluator imports datasets)
    from lm_eval.tasks import TaskManager  # lazy: optional dependency

    try:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    except TypeError:  # an lm_eval without include_defaults
        manager = TaskManager(include_path=str(include_path))
    results = simple_evaluate(
        model=model,
        model_args=model_args or None,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
        bootstrap_iters=bootstrap_iters,  # mean metrics get their closed-form stderr, no resampling
    )
    if results is None:
        raise ArlmError("lm-eval returned no results")
    return results


def run_lm_eval(
    model_ref: str,
    task_yaml_or_dir: str | Path,
    num_fewshot: int = 0,
    limit: int | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    dtype: str = "auto",
) -> dict:
    """Run lm-eval on an arlm model: a task YAML file, a folder of them, or built-in ICL task names
    ('capitals', 'capitals,antonyms' or 'all'); lm-eval's results (lm_eval.utils.make_table draws its table)."""
    reference = str(task_yaml_or_dir)
    path = Path(reference)
    with tempfile.TemporaryDirectory(prefix="arlm-lm-eval-") as scratch:
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            include, names = path.parent, [_yaml_task_name(path)]
        elif path.is_dir():
            include, names = path, [_yaml_task_name(p) for p in sorted(path.glob("*.y*ml"))]
        else:
            wanted = None if reference == "all" else [t.strip() for t in reference.split(",") if t.strip()]
            include, names = Path(scratch), write_task_yamls(scratch, wanted)
        if not names:
            raise ArlmError(f"no lm-eval task YAML found in {path}")
        results = evaluate_with_lm_eval(
            "arlm",
            names,
            include,
            num_fewshot=num_fewshot,
            limit=limit,
            model_args=f"model={model_ref},device={device},batch_size={batch_size},dtype={dtype}",
        )
    return results


def _yaml_task_name(path: Path) -> str:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ArlmError(f"{path} is not valid YAML ({error})") from None
    if not isinstance(config, dict) or "task" not in config:
        raise ArlmError(f"{path} is not an lm-eval task YAML (no 'task' key)")
    return str(config["task"])


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line with the "arlm" model type registered: python -m arlm.evaluation.lm_eval_adapter."""
    from lm_eval.__main__ import cli_evaluate  # lazy: optional dependency (lm-eval's own command line)

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


__all__ = ["ArlmLM", "evaluate_with_lm_eval", "main", "make_table", "run_lm_eval", "write_task_yamls"]

if __name__ == "__main__":
    main()
