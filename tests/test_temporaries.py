"""A temporary is removed only when no process writes it: its process has ended and no lock is held on it."""

import subprocess
import sys

from arlm.temporaries import holding, remove_stale, temporary_for


def _ended_pid() -> int:
    """The id of a process that has ended (reaped), so no process of that id runs."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_killed_writers_temporaries_go_and_nothing_else(tmp_path):
    out, dead = tmp_path / "data", _ended_pid()
    (tmp_path / f"data.tmp-{dead}").mkdir()
    (tmp_path / f"data.tmp-{dead}" / "scratch.txt").write_text("half written")
    (tmp_path / f".data.tmp-{dead}").write_text("x")
    keep = [f"data.tmp-{1}", "data.tmp-mine", f"other.tmp-{dead}", "data.old-5", f"data.tmp-{dead}x", "notes"]
    for name in keep:  # pid 1 runs; the others are not data's temporaries of a process id
        (tmp_path / name).write_text("kept")
    removed = remove_stale(out)
    assert sorted(p.name for p in removed) == sorted([f"data.tmp-{dead}", f".data.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_a_held_temporary_is_kept_though_its_pid_is_not_running_here(tmp_path):
    """A writer in another PID namespace (a container sharing the folder) shows an id unknown here: its lock tells."""
    tmp = tmp_path / f"data.tmp-{_ended_pid()}"
    tmp.mkdir()
    with holding(tmp):
        assert remove_stale(tmp_path / "data") == [] and tmp.exists()
    assert remove_stale(tmp_path / "data") == [tmp] and not tmp.exists()


def test_this_process_writes_under_its_own_id(tmp_path):
    mine = temporary_for(tmp_path / "out.gguf", hidden=True)
    assert mine.name.startswith(".out.gguf.tmp-") and mine.name.endswith(f"-{__import__('os').getpid()}")
    mine.write_text("being written")
    assert remove_stale(tmp_path / "out.gguf") == [] and mine.exists()
