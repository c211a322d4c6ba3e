"""The text of a growing list of ids at the cost of its last few ids, not all of them: a streamed reply of n
tokens decoded whole at every token cost O(n^2) (SmolLM2's tokenizer: 216 us a decode at 2,048 ids, per stream and
step, in the server's batch thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: generate's streamer imports this module where `--help` loads no torch
    from arlm.data.tokenizers import Tokenizer

WINDOW = 64  # ids decoded at a time at most (but where no cut joins back into the whole text)
KEEP = 16  # ids left in the window when its head is set aside (a character or a cleanup rule spans fewer)


class Detokenizer:
    """push(id) returns decode(all ids pushed) exactly: the text of a head set aside once, plus the decoded window of
    the last ids. The head moves on only where the window's text is its two parts' texts joined, and the part set
    aside ends in no incomplete UTF-8 character -- a decoder that strips or merges text at a cut (a SentencePiece
    prefix space, cleanup of spaces before punctuation) keeps its window whole, and is still exact."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        """skip_special False: special tokens' text kept (an echoed prompt's), as tokenizer.decode keeps it."""
        self.tokenizer, self.skip_special = tokenizer, skip_special
        self.ids: list[int] = []
        self.text = ""  # decode(self.ids)
        self._head = ""  # decode(self.ids[: self._cut])
        self._cut = 0

    def push(self, token: int) -> str:
        """Add one id; the whole text so far."""
        self.ids.append(token)
        window = self._decode(self.ids[self._cut :])
        self.text = self._head + window
        if len(self.ids) - self._cut > WINDOW:
            self._move_head(window)
        return self.text

    def _move_head(self, window: str) -> None:
        """Set aside all but the last KEEP ids of the window where the cut changes no text."""
        split = len(self.ids) - KEEP
        before = self._decode(self.ids[self._cut : split])
        if before.endswith("\ufffd") or before + self._decode(self.ids[split:]) != window:
            return
        self._head += before
        self._cut = split

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.skip_special else self.tokenizer.decode(ids, skip_special=False)
