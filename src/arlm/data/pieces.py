"""Documents as a stream of pieces: cutting a unit of text into documents (separator, size) and long
documents into pieces at places where normalization and tokenization see a boundary anyway.

A stream is a sequence of `Chunk`s; `ends` marks the last chunk of a document (its text may be empty).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from arlm.errors import ArlmError

_LINE_END = r"(?:\r\n|\r(?!\n)|\n)"  # LF, CRLF or a CR alone (old Macs' files): one line end each
BLANK_LINES = rf"{_LINE_END}(?:[^\S\r\n]*{_LINE_END})+"  # what `doc_separator: blank` stands for: blank lines
LOOKAHEAD = 1 << 16  # a separator match must end this far before the end of the text read so far
_WORD_START = re.compile(r"(?<=[!-~]|[^\W_]) (?=[A-Za-z])")  # a space between a word and an ASCII letter


class Chunk(NamedTuple):
    """Text of one document (or a part of it), and whether it is the document's last part."""

    name: str
    text: str
    ends: bool


def safe_cut(text: str, limit: int, start: int = 0) -> int | None:
    """A cut in (start, limit] that splits no normalization step and no GPT-2-style pre-token: after the last line
    break between two visible characters, else before the last space between a word and an ASCII letter; where
    (start, limit] has neither, the first such place past limit (a stretch without one -- CJK prose, minified text,
    base64 -- is kept whole: cut anywhere, it would encode to other tokens than the whole); None where the text so
    far has none (more of it may)."""
    if len(text) <= limit:
        return len(text)
    i = text.rfind("\n", start, limit)
    while i > 0:
        if _line_start(text, i):
            return i + 1
        i = text.rfind("\n", start, i)
    words = [m.start() for m in _WORD_START.finditer(text, start, limit + 1) if m.start() > start]
    if words:
        return words[-1]
    i = text.find("\n", limit)
    while 0 < i < len(text) - 1 and not _line_start(text, i):
        i = text.find("\n", i + 1)
    word = _WORD_START.search(text, limit + 1)
    found = [cut for cut in (i + 1 if 0 < i < len(text) - 1 else None, word and word.start()) if cut]
    return min(found, default=None)


def _line_start(text: str, i: int) -> bool:
    """Whether the line break at text[i] stands between two visible characters (a safe cut after it)."""
    after = text[i + 1]
    return not text[i - 1].isspace() and ("!" <= after <= "~" or after.isalnum())


def separator_pattern(separator: str) -> re.Pattern | None:
    """The compiled document separator (`blank`: blank lines), or None for one document a file."""
    if not separator:
        return None
    try:
        return re.compile(BLANK_LINES if separator == "blank" else separator)
    except re.error as exc:
        raise ArlmError(f"data.doc_separator {separator!r} is not a valid regular expression ({exc})") from None


def separate(chunks: Iterable[Chunk], pattern: re.Pattern) -> Iterator[Chunk]:
    """Cut each document of the stream at the separator's matches (the matches are dropped), as
    re.split would on the whole text; a separator must not match empty text."""
    buf, start, count = "", 0, 0  # buf[:start] was emitted (kept as look-behind context)
    for name, text, ends in chunks:
        buf += text
        while True:
            m = pattern.search(buf, start)
            if m is not None and m.end() == m.start():
                raise ArlmError(f"data.doc_separator {pattern.pattern!r} matches empty text; make it match something")
            if m is None or not (ends or m.end() <= len(buf) - LOOKAHEAD):
                break
            yield Chunk(f"{name}#{count}", buf[start : m.start()], True)
            start, count = m.end(), count + 1
        if ends:
            yield Chunk(f"{name}#{count}", buf[start:], True)
            buf, start, count = "", 0, 0
            continue
        flush = len(buf) - 2 * LOOKAHEAD if m is None else min(m.start(), len(buf) - 2 * LOOKAHEAD)
        if flush - start >= LOOKAHEAD:
            yield Chunk(f"{name}#{count}", buf[start:flush], False)
            start = flush
        if start > LOOKAHEAD:
            buf, start = buf[start - LOOKAHEAD :], LOOKAHEAD


def cut_by_size(chunks: Iterable[Chunk], max_chars: int) -> Iterator[Chunk]:
    """Cut documents longer than max_chars into documents of at most max_chars, each ending at the last
    line break inside it (or at max_chars when it has none); only the current line is held."""
    held, used, count = "", 0, 0  # held: text since the last line break emitted; used: characters emitted
    for name, text, ends in chunks:
        held += text
        pos = 0  # held[:pos] is emitted
        while used + len(held) - pos > max_chars:
            room = max_chars - used
            newline = held.rfind("\n", pos, pos + room)
            cut = newline + 1 if newline >= 0 else (pos if used else pos + room)
            yield Chunk(f"{name}~{count}", held[pos:cut], True)
            pos, used, count = cut, 0, count + 1
        if ends:
            yield Chunk(f"{name}~{count}", held[pos:], True)
            held, used, count = "", 0, 0
            continue
        newline = held.rfind("\n", pos)
        if newline >= 0:
            yield Chunk(f"{name}~{count}", held[pos : newline + 1], False)
            pos, used = newline + 1, used + newline + 1 - pos
        held = held[pos:]


def repiece(chunks: Iterable[Chunk], piece_chars: int) -> Iterator[Chunk]:
    """The same documents in pieces: a document of at most piece_chars characters as one piece, a longer
    one cut at safe_cut places (a piece longer than piece_chars where there is none sooner); empty documents are
    dropped."""
    buf, name, emitted = "", "", False
    for chunk in chunks:
        if not buf and not emitted:
            name = chunk.name
        buf += chunk.text
        pos = 0  # buf[:pos] is emitted
        while len(buf) - pos > piece_chars:
            cut = safe_cut(buf, pos + piece_chars, pos)
            if cut is None:  # no safe place yet: the piece grows with the next chunk
                break
            yield Chunk(name, buf[pos:cut], False)
            pos, emitted = cut, True
        buf = buf[pos:]
        if chunk.ends:
            if buf or emitted:
                yield Chunk(name, buf, True)
            buf, emitted = "", False


def join_documents(chunks: Iterable[Chunk]) -> Iterator[tuple[str, str]]:
    """(name, text) of each whole document of a stream."""
    parts: list[str] = []
    name = None
    for chunk in chunks:
        name = chunk.name if name is None else name
        parts.append(chunk.text)
        if chunk.ends:
            yield name, "".join(parts)
            parts, name = [], None
