"""Stop strings: a should_stop check for generate() that fires on a row's recent text, the cut of a finished
text at the first stop string, and how much of a streamed text to hold back until no stop string can start it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: generate's streamer imports this module where `--help` loads no torch
    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.types import StopCheck


def stop_checker(tokenizer: Tokenizer, stops: list[str]) -> StopCheck | None:
    """A should_stop callback that fires when a row's recent text contains a stop string (None without stops)."""
    if not stops:
        return None
    longest = max(len(s) for s in stops)

    def should_stop(row: int, ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-(longest + 8) :])
        return any(s in tail for s in stops)

    return should_stop


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to (not including) the first stop string."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest ending of text that is a proper start of a stop string (it may yet complete)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
