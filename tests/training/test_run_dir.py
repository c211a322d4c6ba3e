"""A run folder: one trainer at a time (an OS lock, released by the kernel on kill -9), --overwrite that loses
nothing until the new run has a checkpoint, and a full disk or read-only folder as one line."""

import contextlib
import os
import signal
import subprocess

import pytest

from arlm.cli import main
from arlm.interop.checkpoint import latest_checkpoint, open_checkpoint
from tests.helpers import kill, start_train, tiny_raw, wait_for, write_corpus, write_yaml

LOCK_FILE = "train.lock"  # the run lock's documented name


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails(capsys, *argv, match):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


@pytest.fixture
def trained(tmp_path):
    """A preset and a finished tiny run made from it (checkpoints at steps 5 and 10)."""
    corpus = write_corpus(tmp_path / "corpus")
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus, train={"checkpoint_interval": 5}))
    assert main(["train", "--preset", str(preset), "--train.max_steps", "10"]) == 0
    return preset, tmp_path / "run"


def _aside(run):
    return sorted(run.parent.glob(f"{run.name}.old-*"))


def test_overwrite_with_a_bad_source_or_model_keeps_the_old_run(trained, tmp_path, capsys):
    preset, run = trained
    before = _snapshot(run)
    nope = tmp_path / "nope.txt"
    _fails(capsys, "train", "--preset", preset, "--data.source", nope, "--overwrite", match="does not exist")
    assert _snapshot(run) == before and not _aside(run)
    # an error after the new data was prepared (a vocabulary smaller than the tokenizer's): still nothing lost
    _fails(capsys, "train", "--preset", preset, "--model.vocab_size", "3", "--overwrite", match="vocab_size 3")
    assert _snapshot(run) == before and not _aside(run)


def test_overwrite_never_deletes_files_a_run_does_not_write(trained, tmp_path, capsys):
    """--overwrite replaces a run, not the user's files beside it: a run folder holding notes, or a project folder
    that merely has a config.json, is refused whole (and keeps no lock file the refusal made)."""
    preset, run = trained
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    _fails(capsys, "train", "--preset", preset, "--overwrite", match="holds files that are not a run's (notes.txt)")
    assert _snapshot(run) == before and not _aside(run)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "main.py").write_text("print()")
    before = _snapshot(project)
    argv = ["train", "--preset", preset, "--train.out_dir", project]
    _fails(capsys, *argv, match="already holds a run")
    _fails(capsys, *argv, "--overwrite", match="holds files that are not a run's (src)")
    assert _snapshot(project) == before and sorted(p.name for p in project.iterdir()) == ["config.json", "src"]


def test_overwrite_of_the_current_folder(trained, capsys, monkeypatch):
    """--train.out_dir . --overwrite from inside a run folder replaces it (a traceback before: '.' has no name)."""
    preset, run = trained
    monkeypatch.chdir(run)
    assert (
        main(["train", "--preset", str(preset), "--train.out_dir", ".", "--train.max_steps", "5", "--overwrite"]) == 0
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000005"] and not _aside(run)


def test_a_first_run_that_fails_leaves_no_folder_it_made(tmp_path, capsys):
    nope, kept = tmp_path / "nope.txt", tmp_path / "kept"
    _fails(capsys, "train", "--data.source", nope, "--train.out_dir", tmp_path / "runs" / "a", match="does not exist")
    assert not (tmp_path / "runs").exists()
    kept.mkdir()  # a folder the user made stays, empty as it was
    _fails(capsys, "train", "--data.source", nope, "--train.out_dir", kept, match="does not exist")
    assert kept.is_dir() and not any(kept.iterdir())


def test_overwrite_replaces_the_run_once_the_new_one_has_a_checkpoint(trained, capsys):
    preset, run = trained
    assert main(["train", "--preset", str(preset), "--train.max_steps", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000005"]
    assert not _aside(run)


@pytest.mark.slow
def test_overwrite_killed_before_its_first_checkpoint_leaves_the_old_run_aside(trained, capsys):
    preset, run = trained
    before = _snapshot(run)
    proc = start_train(preset, run, "--overwrite", "--train.max_steps", "100000", "--train.checkpoint_interval", "0")
    try:
        training = wait_for(lambda: bool(_aside(run)) and (run / "metrics.jsonl").exists(), proc)  # the new log
    finally:
        stderr = kill(proc)
    assert training and proc.returncode == -signal.SIGKILL, stderr
    (aside,) = _aside(run)
    assert aside.name == f"run.old-{proc.pid}"
    assert _snapshot(aside) == {k: v for k, v in before.items() if k.name != LOCK_FILE}
    assert main(["train", "--preset", str(preset), "--overwrite", "--train.max_steps", "5"]) == 0
    assert f"note: {aside} holds an earlier run set aside" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_killed_one_leaves_no_lock(trained, capsys):
    preset, run = trained
    first = start_train(preset, run, "--resume", "--train.max_steps", "100000", "--train.checkpoint_interval", "5")
    try:
        newest = lambda: str(latest_checkpoint(run, log=lambda _: None))
        assert wait_for(lambda: newest() > str(run / "checkpoints" / "step-00000010"), first)  # training on
        for extra in (["--overwrite"], ["--resume"]):  # this test's process is the second trainer
            err = _fails(capsys, "train", "--preset", preset, *extra, match="in use by another training process")
            assert err == (
                f"error: {run} is in use by another training process (pid {first.pid}); wait for it to end, "
                "stop it, or choose another --train.out_dir"
            )
        assert first.poll() is None and not _aside(run)  # the running trainer and its files untouched
    finally:
        kill(first)
    newest_step = open_checkpoint(run).meta["step"]
    assert main(["train", "--preset", str(preset), "--resume", "--train.max_steps", str(newest_step + 2)]) == 0
    assert open_checkpoint(run).meta["step"] == newest_step + 2  # the kernel dropped the dead process's lock


# ---------------------------------------------------------------- a small real filesystem


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs mounted at tmp_path/fs (needs root or CAP_SYS_ADMIN; skipped where mounting is refused)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _small_run(tmp_path, mount):
    """A preset whose run folder lies on the small filesystem and its prepared data beside it."""
    corpus = write_corpus(tmp_path / "corpus")
    raw = tiny_raw(tmp_path, corpus, data={"prepared_dir": str(tmp_path / "data")}, train={"checkpoint_interval": 5})
    raw["train"]["out_dir"] = str(mount / "run")
    return write_yaml(tmp_path / "tiny.yaml", raw), mount / "run"


def _fill(mount, leave):
    """Fill the filesystem up to `leave` free bytes."""
    stat = os.statvfs(mount)
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize - leave))


def test_disk_full_during_a_checkpoint_is_one_line_and_leaves_nothing_half_written(tmp_path, small_fs, capsys):
    preset, run = _small_run(tmp_path, small_fs)
    assert main(["train", "--preset", str(preset), "--train.max_steps", "5"]) == 0
    _fill(small_fs, leave=64 * 1024)  # room for the log, not for a checkpoint
    err = _fails(
        capsys, "train", "--preset", preset, "--resume", "--train.max_steps", "10", match="No space left on device"
    )
    assert "could not write checkpoint" in err and "step-00000010" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000005"]  # no .tmp-PID left
    open_checkpoint(run / "checkpoints" / "step-00000005")  # intact, hashes and all
    (small_fs / "filler").unlink()
    assert main(["train", "--preset", str(preset), "--resume", "--train.max_steps", "10"]) == 0
    assert open_checkpoint(run).meta["step"] == 10


def test_a_read_only_run_folder_is_one_line(tmp_path, small_fs, capsys):
    preset, run = _small_run(tmp_path, small_fs)
    assert main(["train", "--preset", str(preset), "--train.max_steps", "5"]) == 0
    before = _snapshot(run)
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
    try:
        _fails(
            capsys, "train", "--preset", preset, "--resume", "--train.max_steps", "10", match="Read-only file system"
        )
        assert main(["eval", "perplexity", str(run), "--batches", "1"]) == 0  # readers need no write access
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], capture_output=True)
    assert _snapshot(run) == before
