"""Exact resume: a run killed with SIGKILL at any point and resumed ends bit-identical to one never killed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from arlm.commands.train import resume_config, train_command
from arlm.training.logging import read_metrics
from tests.helpers import REPO, tiny_config, tiny_raw, write_yaml


def _losses(run_dir):
    return [
        (r["step"], r["train_loss"], r["train_nll"], r["grad_norm"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "train_nll" in r
    ]


def _evals(run_dir):
    return [(r["step"], r["val_loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]


def _weights(run_dir):
    final = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return (final / "model.safetensors").read_bytes()


def test_resume_in_process_is_exact(tmp_path, corpus_dir, monkeypatch):
    from arlm.training.trainer import Trainer

    extra = {"model": {"dropout": 0.1}, "train": {"max_steps": 24, "checkpoint_interval": 8, "keep_checkpoints": 5}}
    train_command(tiny_config(tmp_path / "a", corpus_dir, **extra), log=lambda _: None)
    original = Trainer.train_step

    def crash_at_step_13(self):
        if self.step == 13:
            raise KeyboardInterrupt  # a crash after the step-8 checkpoint, mid-way to the next
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_13)
    interrupted = tiny_config(tmp_path / "b", corpus_dir, **extra)
    with pytest.raises(KeyboardInterrupt):
        train_command(interrupted, log=lambda _: None)
    monkeypatch.setattr(Trainer, "train_step", original)
    config, path = resume_config(interrupted, "latest", [], preset_given=False)
    assert path.name == "step-00000008"
    train_command(config, resume=path, log=lambda _: None)
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert _losses(b) == _losses(a)
    assert _evals(b) == _evals(a)
    assert _weights(b) == _weights(a)


def _start(preset, out_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "arlm", "train", "--preset", str(preset), "--train.out_dir", str(out_dir), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc, condition, delay):
    deadline = time.time() + 120
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kill_delay", [0.0, 0.35])
def test_sigkill_at_any_point_then_resume_is_bit_identical(tmp_path, corpus_dir, kill_delay):
    raw = tiny_raw(
        tmp_path,
        corpus_dir,
        model={"dropout": 0.1},
        train={"max_steps": 60, "checkpoint_interval": 5, "keep_checkpoints": 3, "eval_interval": 15},
    )
    preset = write_yaml(tmp_path / "tiny.yaml", raw)
    reference = _start(preset, tmp_path / "straight")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    killed_dir = tmp_path / "killed"
    ckpts = killed_dir / "checkpoints"

    def newest_step():
        names = sorted(p.name for p in ckpts.glob("step-*"))
        return int(names[-1].split("-")[1]) if names else 0

    # killed once right as the second checkpoint appears (often mid-write of the next), then killed again
    # after it resumed and went further, then resumed to the end
    proc = _start(preset, killed_dir)
    _kill_when(proc, lambda: len(list(ckpts.glob("step-*"))) >= 2, kill_delay)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    first_stop = newest_step()
    proc = _start(preset, killed_dir, "--resume")
    _kill_when(proc, lambda: newest_step() >= first_stop + 15, kill_delay)
    final = _start(preset, killed_dir, "--resume")
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert _losses(killed_dir) == _losses(tmp_path / "straight")
    assert _evals(killed_dir) == _evals(tmp_path / "straight")
    assert _weights(killed_dir) == _weights(tmp_path / "straight")
