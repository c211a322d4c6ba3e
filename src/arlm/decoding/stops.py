"""Stop strings: a should_stop check for generate() that fires on a row's recent text, the cut of a finished
text at the first stop string, and how much of a streamed text to hold back until no stop string can start it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from arlm.errors import ArlmError

if TYPE_CHECKING:  # annotations only: generate's streamer imports this module where `--help` loads no torch
    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.types import StopCheck


def stop_checker(tokenizer: Tokenizer, stops: list[str]) -> StopCheck | None:
    """A should_stop callback that fires when a row's recent text contains a stop string, or its last id is a
    special token a stop string names (None without stops)."""
    if not stops:
        return None
    # the ids a stop string can span: one per byte at most (a byte-level BPE spells a CJK character in up to 3)
    longest, stop_ids = max(len(s.encode("utf-8")) for s in stops), special_stop_ids(tokenizer, stops)

    def should_stop(row: int, ids: list[int]) -> bool:
        if ids and ids[-1] in stop_ids:
            return True
        tail = tokenizer.decode(ids[-window:])
        return any(s in tail for s in stops)

    window = longest + 8  # the recent ids it reads: the strategies give it no more (stop_tail)
    should_stop.window = window  # type: ignore[attr-defined]
    return should_stop


def stop_when(condition: Callable[[], bool], check: StopCheck | None = None) -> StopCheck:
    """A stop check that fires once condition() holds (a cancel, a text already stopped), or where `check` does."""

    def either(row: int, ids: list[int]) -> bool:
        return condition() or (check is not None and check(row, ids))

    either.window = getattr(check, "window", None) if check is not None else 0  # type: ignore[attr-defined]
    return either


def check_stops(tokenizer: Tokenizer, stops: list[str]) -> None:
    """Refuse a stop string holding a special token's text among other text (`x<|im_end|>`): decoded text never
    holds a special token, so it could never match; the token's text alone is a stop string matched by its id."""
    specials = tokenizer.special_texts()
    for stop in stops:
        held = [s for s in specials if s in stop and s != stop]
        if held:
            raise ArlmError(
                f"the stop string {stop!r} holds the special token {held[0]} among other text, which a reply's text "
                f"never holds (special tokens are no text); give {held[0]!r} as a stop string of its own",
                param="stop",
            )


def special_stop_ids(tokenizer: Tokenizer, stops: list[str]) -> set[int]:
    """The ids of the special tokens that stop strings name (`<|im_start|>`): decoded text never holds a special
    token, so such a stop string is matched by its id."""
    specials = set(tokenizer.special_texts())
    return {ids[0] for s in stops if s in specials and len(ids := tokenizer.encode(s)) == 1}


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
