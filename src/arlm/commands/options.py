"""Checks of command-line values that several verbs share: one wording for one mistake."""

from __future__ import annotations

from arlm.errors import ArlmError


def check_batches(batches: int) -> None:
    """Refuse a negative --batches (0 keeps its documented meaning: the whole split)."""
    if batches < 0:
        raise ArlmError(f"--batches {batches}: give a number of batches of at least 1, or 0 for the whole split")


def refuse_unused(given: dict[str, bool], goes: str) -> None:
    """Refuse the options of `given` ({flag: was it set}) that are set: they only go `goes` ("with --file")."""
    unused = [flag for flag, is_set in given.items() if is_set]
    if unused:
        raise ArlmError(f"{', '.join(unused)} {'goes' if len(unused) == 1 else 'go'} {goes}")
