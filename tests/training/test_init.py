"""Training from existing weights (train.init): an arlm run, and SmolLM2 with exact resume."""

import pytest
import torch

from arlm.commands.train import train_command
from arlm.config import build_config
from arlm.training.logging import read_metrics
from tests.helpers import shakespeare, tiny_config


def test_init_from_an_arlm_run_starts_where_it_ended(tmp_path, corpus_dir):
    first = tiny_config(tmp_path / "a", corpus_dir, train={"max_steps": 30, "lr": 1e-2})
    done = train_command(first, log=lambda _: None)
    second = tiny_config(
        tmp_path / "b",
        corpus_dir,
        data={"tokenizer": str(tmp_path / "a" / "run")},
        train={
            "init": str(tmp_path / "a" / "run"),
            "max_steps": 2,
            "eval_at_start": True,
            "eval_batches": 4,
            "lr": 1e-6,
            "min_lr": 0.0,
        },
    )
    train_command(second, log=lambda _: None)
    start = next(r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl") if r.get("step") == 0)
    val = next(r for r in read_metrics(tmp_path / "a" / "run" / "metrics.jsonl") if r.get("event") == "final")
    assert start["val_loss"] == pytest.approx(val["final_val_loss"], rel=1e-4)
    assert done.final["val"].loss < 4.0


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_fine_tune_resumes_exactly(tmp_path, monkeypatch):
    from arlm.commands.train import resume_config
    from arlm.training.trainer import Trainer

    text = tmp_path / "shakespeare.txt"
    text.write_text(shakespeare().read_text()[:20_000])
    overrides = [
        "--data.source",
        str(text),
        "--data.prepared_dir",
        str(tmp_path / "data"),
        "--model.block_size",
        "32",
        "--train.batch_size",
        "1",
        "--train.max_steps",
        "3",
        "--train.checkpoint_interval",
        "2",
        "--train.eval_interval",
        "3",
        "--train.eval_batches",
        "1",
        "--train.final_eval_batches",
        "1",
        "--train.sample_tokens",
        "0",
        "--train.dtype",
        "float32",
        "--train.eval_at_start",
        "false",
        "--train.log_interval",
        "1",
    ]
    straight = build_config("smollm2-finetune", overrides + ["--train.out_dir", str(tmp_path / "a")])
    train_command(straight, log=lambda _: None)
    original = Trainer.train_step

    def crash_at_step_2(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_2)
    crashed = build_config("smollm2-finetune", overrides + ["--train.out_dir", str(tmp_path / "b")])
    with pytest.raises(KeyboardInterrupt):
        train_command(crashed, log=lambda _: None)
    monkeypatch.setattr(Trainer, "train_step", original)
    config, checkpoint = resume_config(crashed, "latest", [], preset_given=True)
    train_command(config, resume=checkpoint, log=lambda _: None)
    losses = [
        [r["train_nll"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "train_nll" in r]
        for run in ("a", "b")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    weights = [
        (tmp_path / run / "checkpoints" / "step-00000003" / "model.safetensors").read_bytes() for run in ("a", "b")
    ]
    assert weights[0] == weights[1]
    assert torch.isfinite(torch.tensor(losses[0])).all()
