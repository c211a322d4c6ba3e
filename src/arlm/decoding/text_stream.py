"""Streaming detokenization: the text of a growing list of ids, handed out in pieces that never change afterwards,
cut at the first stop string (which is never sent, not even in part; one naming a special token, at that token).
What `arlm generate` / `chat` print as tokens come and what the server sends."""

from __future__ import annotations

import bisect

from arlm.data.tokenizers import Tokenizer
from arlm.decoding.detokenize import Detokenizer
from arlm.decoding.stops import held_back, special_stop_ids


class TextStream:
    """Text deltas for one sequence: push ids one by one; a piece is held back while it ends in an incomplete
    UTF-8 character or in what could be the start of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | None = None, skip_special: bool = True) -> None:
        """skip_special False: special tokens' text is kept (an echoed prompt's, as the server echoes it)."""
        self.tokenizer = tokenizer
        self.stops = [s for s in (stops or []) if s]
        self.longest = max(map(len, self.stops), default=0)
        self.stop_ids = special_stop_ids(tokenizer, self.stops)  # special tokens a stop string names
        self.decoded = Detokenizer(tokenizer, skip_special)  # the ids pushed and their text
        self.sent = ""  # text handed out so far
        self.stopped = False  # a stop string was found; the text is final
        self.starts: list[int] = []  # per id pushed, where its text begins in the decoded text
        self._decoded = 0  # length of the decoded text, an incomplete character's U+FFFD at its end left out

    def push(self, token: int) -> str:
        """Add one id; returns the text that became final (possibly empty)."""
        if self.stopped:
            return ""
        self.starts.append(self._decoded)
        text = self.decoded.push(token)
        if token in self.stop_ids:  # (a special token adds no text: all the text before it is final)
            self.stopped = True
            return self._advance(text)
        self._decoded = max(self._decoded, len(text.rstrip("\ufffd")))
        start = max(0, len(self.sent) - self.longest + 1)  # a stop found now ends after the text sent: search its end
        cut = min((i for i in (text.find(s, start) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(text[:cut])
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return ""
        return self._advance(text[: len(text) - held_back(text, self.stops)])

    def flush(self) -> str:
        """The held-back rest once the sequence has ended (nothing after a stop string)."""
        if self.stopped:
            return ""
        return self._advance(self.decoded.text)

    @property
    def text(self) -> str:
        """All the text handed out."""
        return self.sent

    def position(self) -> dict[str, int]:
        """ "start": where the last id's text begins (an id pushed after a stop string has none and is never listed);
        "listed": how many of the ids have text in what was handed out: those whose text begins before its end (an
        end-of-text id, which adds no text, and the ids of a stop string or after it are not; an id a stop string
        begins inside of is)."""
        start = self.starts[-1] if self.starts else 0
        return {"start": start, "listed": bisect.bisect_left(self.starts, len(self.sent))}

    def _advance(self, final: str) -> str:
        """The part of `final` not sent yet (text is only ever appended to)."""
        if not final.startswith(self.sent) or len(final) <= len(self.sent):
            return ""
        delta = final[len(self.sent) :]
        self.sent = final
        return delta
