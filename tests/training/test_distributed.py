"""torchrun on CPU (gloo): DDP and FSDP2 follow the single-process loss curve at the same global batch, and a
killed distributed run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, tiny_raw, write_yaml

pytestmark = pytest.mark.slow


def _losses(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [r["train_nll"] for r in records if "train_nll" in r]


def _weights(run_dir):
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return (newest / "model.safetensors").read_bytes()


def _torchrun(preset, out_dir, *extra, wait=True):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--log-dir",  # torchrun's own folder, else a torchelastic_* left in /tmp per launch
        str(out_dir.parent / "torchrun-logs"),
        "--nproc_per_node",
        "2",
        "-m",
        "arlm",
        "train",
        "--preset",
        str(preset),
        "--train.out_dir",
        str(out_dir),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    with open(out_dir.parent / f"{out_dir.name}.out", "w") as out:  # what the ranks print
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    if wait:
        try:
            _, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        assert proc.returncode == 0, err[-3000:]
    return proc


def _single(preset, out_dir, *extra):
    done = subprocess.run(
        [sys.executable, "-m", "arlm", "train", "--preset", str(preset), "--train.out_dir", str(out_dir), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def preset(tmp_path, corpus_dir):
    raw = tiny_raw(
        tmp_path,
        corpus_dir,
        train={
            "batch_size": 4,
            "grad_accum": 2,
            "max_steps": 12,
            "log_interval": 1,
            "checkpoint_interval": 3,
            "eval_interval": 6,
            "lr_decay_steps": 12,
            "keep_checkpoints": 10,
        },
    )
    return write_yaml(tmp_path / "tiny.yaml", raw)


def test_ddp_and_fsdp_follow_the_single_process_curve(tmp_path, preset):
    _single(preset, tmp_path / "single", "--train.batch_size", "8", "--train.grad_accum", "1")
    _torchrun(preset, tmp_path / "ddp")
    _torchrun(preset, tmp_path / "fsdp", "--train.parallel", "fsdp", "--train.sample_tokens", "8")
    _torchrun(preset, tmp_path / "fsdp-ac", "--train.parallel", "fsdp", "--train.activation_checkpointing", "true")
    reference = _losses(tmp_path / "single")
    assert len(reference) == 12
    for run in ("ddp", "fsdp", "fsdp-ac"):
        assert _losses(tmp_path / run) == pytest.approx(reference, abs=1e-5)
    # the main rank's sample after FSDP (whose forward needs every rank) comes from the checkpoint, loaded whole
    assert "--- sample (8 tokens" in (tmp_path / "fsdp.out").read_text()
    # the consolidated FSDP checkpoint loads in one process
    from arlm.interop.loading import load_model

    assert load_model(tmp_path / "fsdp").model.num_params() > 0


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_killed_distributed_run_resumes_exactly(tmp_path, preset, parallel):
    extra = ["--train.parallel", parallel, "--model.dropout", "0.1"]
    _torchrun(preset, tmp_path / "straight", *extra)
    killed = tmp_path / "killed"
    proc = _torchrun(preset, killed, *extra, wait=False)
    deadline = time.time() + 300
    while len(list((killed / "checkpoints").glob("step-*"))) < 2 and time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _torchrun(preset, killed, *extra, "--resume")
    assert _losses(killed) == _losses(tmp_path / "straight")
    assert _weights(killed) == _weights(tmp_path / "straight")


def test_resume_on_another_number_of_processes_keeps_the_data_order(tmp_path, preset):
    _torchrun(preset, tmp_path / "two", "--train.max_steps", "6")
    _single(preset, tmp_path / "two", "--resume", "--train.max_steps", "12")
    _torchrun(preset, tmp_path / "reference")
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "reference"), abs=1e-5)
