"""Runs timed side by side: every run of a set in turn, the order reversed every repeat, so that a machine's slow
stretch falls on all of them (the comparison every benchmark here makes)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def alternate(runs: dict[K, Callable[[], T]], repeats: int) -> dict[K, list[T]]:
    """Each run's results (a time, a rate, an output) over `repeats` rounds, the runs in their order in even rounds
    and reversed in odd ones."""
    figures: dict[K, list[T]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items() if r % 2 == 0 else reversed(runs.items()):
            figures[name].append(run())
    return figures
