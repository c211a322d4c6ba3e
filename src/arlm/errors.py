"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class ArlmError(Exception):
    """A mistake the user can fix; the CLI prints its message on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def check_creatable(path: str | Path, *, folder: bool = False) -> None:
    """Refuse an output path that could not be made: a folder above it (or, for a folder, the path) is a file."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ArlmError(f"{path} is a file, not a folder; choose a folder to write to")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArlmError(f"cannot write {path}: {parent} is a file, not a folder")
            return
