"""LoRA training: only the adapters change, and a run killed with SIGKILL resumes bit-identically."""

import os
import signal
import time

import pytest
from safetensors.torch import load_file

from arlm.commands.train import resume_config, train_command
from arlm.config import config_from_dict
from arlm.training.logging import read_metrics
from tests.helpers import chat_raw, start_train, tiny_base, write_chat, write_yaml


def _losses(run_dir):
    return [
        (r["step"], r["train_loss"], r["grad_norm"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "train_nll" in r
    ]


def _adapters(run_dir):
    final = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return (final / "model.safetensors").read_bytes(), (final / "peft" / "adapter_model.safetensors").read_bytes()


@pytest.fixture
def lora_preset(tmp_path):
    base = tiny_base(tmp_path / "base")
    raw = chat_raw(
        tmp_path, base, write_chat(tmp_path / "chat.jsonl"),
        model={"dropout": 0.0}, train={"max_steps": 40, "checkpoint_interval": 5, "keep_checkpoints": 3},
    )  # fmt: skip
    raw["train"]["lora"]["dropout"] = 0.1  # the RNG matters on resume
    return write_yaml(tmp_path / "lora.yaml", raw), raw


@pytest.mark.slow
def test_only_the_adapters_train_and_resume_in_process_is_exact(tmp_path, lora_preset, monkeypatch):
    from arlm.training.trainer import Trainer

    _, raw = lora_preset
    straight = config_from_dict({**raw, "train": {**raw["train"], "out_dir": str(tmp_path / "a")}}).validate()
    train_command(straight, log=lambda _: None)
    original = Trainer.train_step

    def crash_at_step_12(self):
        if self.step == 12:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_12)
    crashed = config_from_dict({**raw, "train": {**raw["train"], "out_dir": str(tmp_path / "b")}}).validate()
    with pytest.raises(KeyboardInterrupt):
        train_command(crashed, log=lambda _: None)
    monkeypatch.setattr(Trainer, "train_step", original)
    config, checkpoint = resume_config(crashed, "latest", [], preset_given=False)
    assert checkpoint.path.name == "step-00000010"
    train_command(config, resume=checkpoint, log=lambda _: None)
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    assert _adapters(tmp_path / "b") == _adapters(tmp_path / "a")
    saved = load_file(sorted((tmp_path / "a" / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
    assert {k.rsplit(".", 1)[-1] for k in saved} == {"lora_A", "lora_B"}


def _kill_when(proc, condition):
    deadline = time.time() + 120
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_during_a_lora_run_then_resume_is_bit_identical(tmp_path, lora_preset):
    preset, _ = lora_preset
    reference = start_train(preset, tmp_path / "straight")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    killed = tmp_path / "killed"
    proc = start_train(preset, killed)
    _kill_when(proc, lambda: len(list((killed / "checkpoints").glob("step-*"))) >= 2)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    final = start_train(preset, killed, "--resume")
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert _losses(killed) == _losses(tmp_path / "straight")
    assert _adapters(killed) == _adapters(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_lora_under_torchrun_follows_the_single_process_curve_and_resumes(tmp_path, lora_preset, parallel):
    from tests.training.test_distributed import _losses as nll_log
    from tests.training.test_distributed import _single, _torchrun

    preset, _ = lora_preset
    steps = ["--train.max_steps", "10", "--train.lr_decay_steps", "10", "--train.log_interval", "1"]
    steps += ["--train.lora.dropout", "0", "--train.eval_interval", "5", "--data.val_fraction", "0.5"]
    # (enough validation rows for a batch on each process: with fewer batches than processes the evaluation
    # of BatchSampler._eval_starts leaves one process without a forward, and DDP waits for it forever)
    _single(preset, tmp_path / "single", *steps, "--train.batch_size", "8")
    two = [*steps, "--train.parallel", parallel, "--train.grad_accum", "2"]  # 2 processes x 4 rows x 2
    _torchrun(preset, tmp_path / "two", *two, "--train.max_steps", "5")
    _torchrun(preset, tmp_path / "two", *two, "--resume")
    assert nll_log(tmp_path / "two") == pytest.approx(nll_log(tmp_path / "single"), abs=1e-5)


def test_a_lora_run_resumed_from_the_command_line_keeps_its_adapters(tmp_path, lora_preset, capsys):
    from arlm.cli import main

    _, raw = lora_preset
    run = tmp_path / "r"
    short = {**raw["train"], "out_dir": str(run), "max_steps": 4, "checkpoint_interval": 2}
    train_command(config_from_dict({**raw, "train": short}).validate(), log=lambda _: None)
    resume = ["train", "--resume", "--train.out_dir", str(run), "--train.max_steps"]
    assert main([*resume, "6", "--train.lora.rank", "0"]) == 2  # the run's adapters cannot become a full fine-tune
    assert capsys.readouterr().err.strip().endswith("holds LoRA adapters; resume it with its own train.lora")
    for key, value in (("rank", "8"), ("alpha", "64"), ("targets", "[qkv, proj]")):  # (a traceback / rescaled adapters)
        assert main([*resume, "6", f"--train.lora.{key}", value]) == 2
        assert f"holds adapters trained at train.lora.{key} " in capsys.readouterr().err
    assert main([*resume, "6", "--train.lora.rank", "4"]) == 0  # its own rank, no preset: checked on the run's config
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train_nll" in r][-1] == 6


def test_gradient_norms_of_a_lora_run_are_its_adapters(tmp_path, lora_preset):
    """--train.grad_norms on LoRA (it raised AttributeError at the first step): each block's attention and MLP
    adapters' gradient norm, from the first step (lora_B's gradient is not zero there)."""
    _, raw = lora_preset
    short = {**raw["train"], "out_dir": str(tmp_path / "g"), "max_steps": 2, "grad_norms": True, "log_interval": 1}
    train_command(config_from_dict({**raw, "train": short}).validate(), log=lambda _: None)
    first = next(r for r in read_metrics(tmp_path / "g" / "metrics.jsonl") if "train_nll" in r)
    norms = {k: v for k, v in first.items() if k.startswith("gradnorm/")}
    assert set(norms) == {f"gradnorm/L{i}/{part}" for i in range(2) for part in ("attn", "mlp")}
    assert all(v > 0 for v in norms.values())


def test_throughput_counts_the_positions_run_and_tokens_the_answers(tmp_path, lora_preset, monkeypatch):
    """tok/s and MFU of chat data counted its answer tokens alone (a tenth of what the model ran over, or less); the
    `tokens` axis stays the targets trained on."""
    from arlm.training.trainer import Trainer

    _, raw = lora_preset
    records, step = [], Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: records.append(step(self)) or records[-1])
    short = {**raw["train"], "out_dir": str(tmp_path / "t"), "max_steps": 1, "log_interval": 1}
    train_command(config_from_dict({**raw, "train": short}).validate(), log=lambda _: None)
    rows, context = raw["train"]["batch_size"] * raw["train"].get("grad_accum", 1), raw["model"]["block_size"]
    assert 0 < records[0]["tokens"] < records[0]["step_tokens"] <= rows * context
