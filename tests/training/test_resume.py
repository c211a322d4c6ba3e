"""Exact resume: a run killed with SIGKILL at any point and resumed ends bit-identical to one never killed."""

import json
import os
import shutil
import signal
import time
from collections import Counter

import pytest

from arlm.cli import main
from arlm.commands.train import resume_config, train_command
from arlm.interop.checkpoint import open_checkpoint
from arlm.training.logging import read_metrics
from tests.helpers import kill, start_train, tiny_config, tiny_raw, wait_for, write_yaml


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


@pytest.mark.slow
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
    config, checkpoint = resume_config(interrupted, "latest", [], preset_given=False)
    assert checkpoint.path.name == "step-00000008"
    train_command(config, resume=checkpoint, log=lambda _: None)
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert _losses(b) == _losses(a)
    assert _evals(b) == _evals(a)
    assert _weights(b) == _weights(a)


_start = start_train


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


@pytest.fixture
def finished(tmp_path, corpus_dir):
    """A preset and its finished 10-step run (checkpoints at steps 5 and 10)."""
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"checkpoint_interval": 5}))
    assert main(["train", "--preset", str(preset), "--train.max_steps", "10"]) == 0
    return preset, tmp_path / "run"


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, capsys):
    _, run = finished
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--train.out_dir", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"{run} is already finished (step-00000010, train.max_steps 10)" in out
    assert "wrote None" not in out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_raising_max_steps_on_resume_notes_the_schedule_it_redraws(finished, capsys):
    """The cosine is drawn over train.max_steps: step 11 of a finished 10-step run trains at a rate climbed back up
    from min_lr, which the resume says; lr_decay_steps pinned to the old count keeps the old schedule, silently."""
    _, run = finished
    capsys.readouterr()
    argv = ["train", "--train.out_dir", str(run), "--resume", "--train.max_steps"]
    assert main([*argv, "12", "--train.lr_decay_steps", "10", "--train.checkpoint_interval", "1"]) == 0
    assert "schedule changed" not in capsys.readouterr().out
    assert main([*argv, "15", "--train.lr_decay_steps", "0"]) == 0  # (0: the run's max_steps, now 15)
    out = capsys.readouterr().out
    assert "note: the learning-rate schedule changed: step 13 trains at" in out
    assert "--train.lr_decay_steps 10 keeps its decay" in out


def test_resume_with_other_data_settings_is_refused_and_keeps_the_runs_data(finished, capsys):
    """A data override on --resume is refused before the run's prepared data is touched (it was replaced, and the
    next plain --resume trained on the new data); the plain --resume then continues on the data it trained on."""
    _, run = finished
    data = {p: p.read_bytes() for p in (run / "data").rglob("*") if p.is_file()}
    argv = ["train", "--train.out_dir", str(run), "--resume", "--train.max_steps", "15"]
    assert main([*argv, "--data.val_fraction", "0.2"]) == 2
    assert "was trained on data prepared with other settings than these" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (run / "data").rglob("*") if p.is_file()} == data
    assert main(argv) == 0
    assert "using prepared data in" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (run / "data").rglob("*") if p.is_file()} == data


def test_a_run_whose_data_was_prepared_again_since_says_so_and_resumes_on_a_new_folder(finished, capsys):
    """Another run's --overwrite re-prepared a shared data folder: the refusal blamed settings the user had not
    changed. It says the folder was prepared again, from what, and how to resume (the run's data prepared anew)."""
    _, run = finished
    meta_path = run / "data" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"], meta["data"]["source"] = "0" * 16, "other.jsonl"  # as another run's prepare left it
    meta_path.write_text(json.dumps(meta))
    argv = ["train", "--train.out_dir", str(run), "--resume", "--train.max_steps", "12"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no longer holds the data this run trained on: it was prepared again since" in err
    assert "(from other.jsonl); resume with --data.prepared_dir NEW_FOLDER to prepare the run's data there again" in err
    assert main([*argv, "--data.prepared_dir", str(run.parent / "again")]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_run_resumed_on_data_prepared_again_from_a_changed_source_says_so(tmp_path, corpus_dir, capsys):
    """Resumed into a new data folder (as the refusal of a re-prepared one advises), a changed source gave the run
    other data without a word."""
    shutil.copytree(corpus_dir, tmp_path / "texts")
    raw = tiny_raw(tmp_path, str(tmp_path / "texts"), train={"checkpoint_interval": 5})
    assert main(["train", "--preset", str(write_yaml(tmp_path / "tiny.yaml", raw)), "--train.max_steps", "5"]) == 0
    argv = ["train", "--train.out_dir", str(tmp_path / "run"), "--resume", "--train.max_steps", "6"]
    assert main([*argv, "--data.prepared_dir", str(tmp_path / "same")]) == 0  # the source as it was: nothing said
    assert "changed (size or time) since this run trained on it" not in capsys.readouterr().out
    first = sorted((tmp_path / "texts").rglob("*.txt"))[0]
    first.write_text(first.read_text() + "\nA line that was not there.\n")
    assert main([*argv[:-1], "7", "--data.prepared_dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"was prepared from {first.resolve()} as it is now, changed (size or time) since this run trained" in out


def test_a_run_on_a_relative_source_resumes_once_the_source_is_gone(tmp_path, corpus_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(corpus_dir, tmp_path / "texts")
    raw = tiny_raw(tmp_path, "texts", train={"checkpoint_interval": 5})
    preset = write_yaml(tmp_path / "tiny.yaml", raw)
    assert main(["train", "--preset", str(preset), "--train.max_steps", "5"]) == 0
    shutil.rmtree(tmp_path / "texts")
    assert main(["train", "--train.out_dir", str(tmp_path / "run"), "--resume", "--train.max_steps", "10"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_resume_hashes_each_checkpoint_file_once(finished, monkeypatch):
    import arlm.interop.checkpoint as ckpt

    preset, run = finished
    resumed = run / "checkpoints" / "step-00000010"
    hashed = Counter()
    real = ckpt._sha256

    def counting(file):
        hashed[file] += 1
        return real(file)

    monkeypatch.setattr(ckpt, "_sha256", counting)
    for argv in (["--preset", str(preset)], ["--train.out_dir", str(run)]):  # config from the preset, or saved
        hashed.clear()
        assert main(["train", *argv, "--resume", "--train.max_steps", "12", "--train.checkpoint_interval", "0"]) == 0
        files = {p for p in resumed.rglob("*") if p.is_file() and p.name != "manifest.json"}
        assert {f: n for f, n in hashed.items() if resumed in f.parents} == dict.fromkeys(files, 1)
        resumed_to = run / "checkpoints" / "step-00000012"
        shutil.rmtree(resumed_to)  # so the second pass resumes step 10 again


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, corpus_dir, capsys):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    killed = tmp_path / "killed"
    proc = _start(preset, killed, "--train.max_steps", "100000", "--train.checkpoint_interval", "0")
    try:
        logged = wait_for(
            lambda: (killed / "metrics.jsonl").exists() and (killed / "metrics.jsonl").stat().st_size, proc
        )
    finally:
        stderr = kill(proc)
    assert logged and proc.returncode == -signal.SIGKILL, stderr
    assert not list((killed / "checkpoints").glob("step-*"))
    shorter = ["--train.max_steps", "10", "--train.checkpoint_interval", "5"]
    assert main(["train", "--train.out_dir", str(killed), "--resume", *shorter]) == 0  # its saved config
    assert "has no checkpoint yet (the run stopped before its first); training it again from step 0" in (
        capsys.readouterr().out
    )
    assert main(["train", "--preset", str(preset), "--train.out_dir", str(tmp_path / "straight"), *shorter]) == 0
    assert _losses(killed) == _losses(tmp_path / "straight")
    assert _weights(killed) == _weights(tmp_path / "straight")


def test_a_stray_step_folder_is_never_pruned_nor_counted(finished, capsys):
    preset, run = finished
    stray = run / "checkpoints" / "step-99999999"
    shutil.copytree(run / "checkpoints" / "step-00000010", stray)
    manifest = json.loads((stray / "manifest.json").read_text())
    manifest["files"]["model.safetensors"]["bytes"] += 1  # the wrong size
    (stray / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert (
        main(["train", "--preset", str(preset), "--resume", "--train.keep_checkpoints", "1", "--train.max_steps", "20"])
        == 0
    )
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-00000010 at step 10" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000020", "step-99999999"]
    assert out.count(f"warning: ignoring {stray}") == 1  # named once, though the run saved twice
    assert open_checkpoint(run).path.name == "step-00000020"


def test_a_folder_not_named_by_step_is_no_checkpoint(finished, capsys):
    """A user's checkpoints/step-mine (sorted after every step-N by name) is neither the newest checkpoint nor
    reported as one that was not finished writing."""
    _, run = finished
    (run / "checkpoints" / "step-mine").mkdir()
    capsys.readouterr()
    assert open_checkpoint(run).path.name == "step-00000010"
    assert main(["train", "--train.out_dir", str(run), "--resume", "--train.max_steps", "15"]) == 0
    out = capsys.readouterr().out
    assert "step-mine" not in out and "resumed from" in out and (run / "checkpoints" / "step-mine").is_dir()
