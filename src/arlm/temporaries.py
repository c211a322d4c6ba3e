"""Temporaries beside an output (written under another name, then renamed into place) and the ones a process that
was killed left behind: held by a lock while written, removed by the next writer of the same output."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX; elsewhere no temporary is held, and none is taken for stale unless its process is gone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

MARK = ".tmp-"


def temporary_for(path: Path, *, hidden: bool = False) -> Path:
    """The name this process writes `path` under before renaming it: PATH.tmp-PID (.PATH.tmp-PID if hidden)."""
    return path.with_name(f"{'.' if hidden else ''}{path.name}{MARK}{os.getpid()}")


@contextlib.contextmanager
def holding(tmp: Path) -> Iterator[None]:
    """Hold a shared lock on `tmp` (a file or a folder) while this process writes it (a temporary, so that another
    writer of the same output never takes it for stale) or reads it (prepared data a run trains on, so that no
    prepare replaces it meanwhile); the kernel drops the lock however the process ends."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def remove_stale(path: Path) -> list[Path]:
    """Delete the temporaries of `path` (PATH.tmp-PID, .PATH.tmp-PID) that no process writes any more: their
    process is not running here and no lock is held on them. Returns what was deleted."""
    removed = []
    for name in (path.name, f".{path.name}"):
        prefix = f"{name}{MARK}"
        for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
            pid = tmp.name[len(prefix) :]
            if pid.isdigit() and not _running(int(pid)) and not in_use(tmp):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    """Whether a process of this id runs on this machine (another user's included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or an id too large to be one
        return False
    except PermissionError:  # another user's
        return True
    return True


def in_use(tmp: Path) -> bool:
    """Whether some process holds a lock on `tmp` (`holding`: a temporary being written, perhaps from another PID
    namespace, or prepared data a run is training on)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return True  # unreadable: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
