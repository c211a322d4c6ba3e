"""A run folder's ownership: one training process at a time (an OS lock), an --overwrite that loses nothing
until the new run has a checkpoint, and write failures (disk full, read-only) as one line."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from arlm.errors import ArlmError
from arlm.temporaries import MARK

try:  # POSIX; elsewhere a run folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = "train.lock"
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "config.json")  # what a folder holding a run has
RUN_FILES = {*RUN_MARKERS, LOCK_FILE, "loss.png", "tensorboard", "data"}  # all a run writes: what --overwrite replaces
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def holds_run(run_dir: Path) -> bool:
    """Whether the folder holds a run (its metrics, checkpoints or config), which only --overwrite replaces."""
    return any((run_dir / marker).exists() for marker in RUN_MARKERS)


def foreign_entries(run_dir: Path) -> list[str]:
    """What a run folder holds that no run writes (a user's files, which replacing the run would delete)."""
    return [e.name for e in run_dir.iterdir() if e.name not in RUN_FILES and not e.name.startswith(f"data{MARK}")]


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on RUN/train.lock while a process trains in RUN.

    A second trainer is refused with one line naming the holder's pid. The kernel drops the lock when the
    holder's process ends, however it ends (kill -9 included), so no stale lock is ever left. A run that fails
    before writing anything removes the lock file it made (while still held) and the folders it made.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ArlmError(f"train.out_dir {run_dir} is a file; name a folder for the run")
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    new_lock = not (run_dir / LOCK_FILE).exists()
    before = {e.name for e in run_dir.iterdir()} if run_dir.is_dir() else set()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ArlmError(f"cannot write in the run folder {run_dir}: {exc.strerror}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise ArlmError(
                    f"{run_dir} is in use by another training process (pid {holder}); wait for it to end, "
                    "stop it, or choose another --train.out_dir"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        except BaseException:
            if new_lock:
                _remove_made(run_dir, made, before)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # a run's file stays (deleting a lock file races); its pid goes
    finally:
        os.close(fd)


def _remove_made(run_dir: Path, made: list[Path], before: set[str]) -> None:
    """Where RUN holds nothing but what it held `before` and the lock file this run made: remove that and the
    folders this run made, deepest first, while the lock is still held (a trainer that opened the file meanwhile is
    refused by the held lock, one that comes after makes them anew)."""
    with contextlib.suppress(OSError):
        if {entry.name for entry in run_dir.iterdir()} != before | {LOCK_FILE}:
            return
        (run_dir / LOCK_FILE).unlink()
        for folder in made:
            folder.rmdir()  # stops at the first folder that holds something else


def set_aside(run_dir: Path) -> Path:
    """Move an earlier run's files into RUN.old-PID beside it (the lock file stays where it is)."""
    run_dir = run_dir.resolve()  # (".": the folder's own name)
    aside = run_dir.with_name(f"{run_dir.name}.old-{os.getpid()}")
    for n in itertools.count(1):
        try:
            aside.mkdir()
            break
        except FileExistsError:  # left by an earlier process of the same pid
            aside = run_dir.with_name(f"{run_dir.name}.old-{os.getpid()}.{n}")
    for entry in run_dir.iterdir():
        if entry.name != LOCK_FILE:
            os.replace(entry, aside / entry.name)
    return aside


def put_back(run_dir: Path, aside: Path) -> None:
    """Undo set_aside: delete what the new run wrote, then move the earlier run's files back."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in aside.iterdir():
        os.replace(entry, run_dir / entry.name)
    aside.rmdir()


def discard(aside: Path) -> None:
    """Delete a run set aside, once the run that replaces it has a checkpoint."""
    if aside.exists():
        shutil.rmtree(aside)


def leftovers(run_dir: Path) -> list[Path]:
    """Runs set aside beside RUN by an --overwrite whose process died before its first checkpoint."""
    return sorted(p for p in run_dir.parent.glob(f"{run_dir.name}.old-*") if p.is_dir())


@contextlib.contextmanager
def write_errors_as_one_line(run_dir: Path) -> Iterator[None]:
    """Turn a disk full, a read-only folder or a refused permission while training into one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        where = exc.filename or run_dir
        raise ArlmError(f"{where}: {exc.strerror}; the checkpoints already written are intact") from None
