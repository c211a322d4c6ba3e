"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations


class ArlmError(Exception):
    """A mistake the user can fix; the CLI prints its message on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
