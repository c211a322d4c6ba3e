"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType


class ArlmError(Exception):
    """A mistake the user can fix; the CLI prints its message on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        """param: the argument at fault, code: the kind of refusal (an API error names both; the CLI does not)."""
        super().__init__(" ".join(message.split()))
        self.param, self.code = param, code


def optional_package(module: str, needed_for: str, extra: str, *, name: str | None = None) -> ModuleType:
    """An optional dependency, imported, or ArlmError naming the extra that installs it (one wording for all):
    "<needed_for> needs <name>: pip install 'arlm[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ArlmError(f"{needed_for} needs {name or module}: pip install 'arlm[{extra}]'") from None


def check_creatable(path: str | Path, *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that could not be made: a folder above it (or, for a folder, the path)
    is a file, or the nearest folder that exists cannot be written (a read-only file system, no permission)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ArlmError(f"{path} is a file, not a folder; choose a folder to write to")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArlmError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                read_only = os.statvfs(parent).f_flag & os.ST_RDONLY
                why = "is on a read-only file system" if read_only else "is not writable by this user"
                raise ArlmError(f"cannot write {path}: {parent} {why}; write elsewhere")
            break
    if not folder and path.parent.is_dir() and not path.is_dir():
        _try_open(path)


def _try_open(path: Path) -> None:
    """Open a file to write (appending nothing; one made here is removed): what permissions do not tell, such as
    a file system that makes no files (/proc) or a root-owned read-only file, is refused before any work."""
    made = not path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise ArlmError(f"cannot write {path}: {exc.strerror}; write elsewhere") from None
    if made:
        path.unlink(missing_ok=True)


def check_replaceable(folder: str | Path, foreign: list[str], what: str) -> None:
    """Refuse to replace (--overwrite) a folder holding files other than `what`'s: replacing it would delete them."""
    if foreign:
        listed = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ArlmError(
            f"{folder} holds files that are not {what} ({listed}); --overwrite would delete them: move them, "
            "or choose another folder"
        )
