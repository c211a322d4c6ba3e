"""A scratch store of normalized documents: their UTF-8 text in one file, and a few numbers a document
(byte offset, length in characters, digest), so the splits can be read back in any order."""

from __future__ import annotations

import codecs
import hashlib
import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from arlm.data.pieces import Chunk, repiece
from arlm.data.split import DIGEST_BYTES

READ_BYTES = 1 << 20


class TextStore:
    """Append documents piece by piece; read any character range of one back in pieces."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "w+b")  # noqa: SIM115 - closed in close()
        self._offsets = array("q", [0])  # byte offset of each document, then the end
        self._chars = array("q")
        self._digests = bytearray()
        self._hash = hashlib.sha256()
        self._open_chars = self._open_bytes = 0
        self._unflushed = False

    def write(self, text: str) -> None:
        """Append text to the current document."""
        data = text.encode("utf-8")
        self._file.write(data)
        self._hash.update(data)
        self._open_chars += len(text)
        self._open_bytes += len(data)
        self._unflushed = True

    def end_document(self) -> None:
        """Close the current document; an empty one is dropped."""
        if self._open_chars:
            self._offsets.append(self._offsets[-1] + self._open_bytes)
            self._chars.append(self._open_chars)
            self._digests += self._hash.digest()[:DIGEST_BYTES]
        self._hash = hashlib.sha256()
        self._open_chars = self._open_bytes = 0

    def __len__(self) -> int:
        return len(self._chars)

    @property
    def chars(self) -> np.ndarray:
        """(N,) int64 length of each document in characters (a view: write no more documents after)."""
        return np.frombuffer(self._chars, dtype=np.int64) if len(self._chars) else np.zeros(0, np.int64)

    @property
    def digests(self) -> np.ndarray:
        """(N,) S16 digest of each document's text, split.text_digest (a view, as chars)."""
        return np.frombuffer(self._digests, dtype=f"S{DIGEST_BYTES}")

    def doc_bytes(self, doc: int) -> int:
        """UTF-8 bytes of a whole document."""
        return self._offsets[doc + 1] - self._offsets[doc]

    def pieces(self, doc: int, start: int, end: int, piece_chars: int) -> Iterator[Chunk]:
        """Characters [start, end) of a document, whole when at most piece_chars long, else in pieces
        cut at pieces.safe_cut places; the last piece has ends=True."""
        if self._unflushed:
            self._file.flush()
            self._unflushed = False
        if self._chars[doc] <= piece_chars:  # a short document: one read, one piece
            first = self._offsets[doc]
            text = os.pread(self._file.fileno(), self._offsets[doc + 1] - first, first).decode("utf-8")
            return iter([Chunk("", text[start:end], True)])
        return repiece(self._blocks(doc, start, end), piece_chars)

    def _blocks(self, doc: int, start: int, end: int) -> Iterator[Chunk]:
        fd = self._file.fileno()
        first, stop = self._offsets[doc], self._offsets[doc + 1]
        if stop - first == self._chars[doc]:  # ASCII: characters are bytes
            first, stop, start, end = first + start, first + end, 0, end - start
        decoder = codecs.getincrementaldecoder("utf-8")()
        seen = 0  # characters decoded so far
        for offset in range(first, stop, READ_BYTES):
            text = decoder.decode(
                os.pread(fd, min(READ_BYTES, stop - offset), offset), final=offset + READ_BYTES >= stop
            )
            lo, hi = max(start - seen, 0), min(end - seen, len(text))
            seen += len(text)
            if lo < hi:
                yield Chunk("", text[lo:hi], False)
            if seen >= end:
                break
        yield Chunk("", "", True)

    def close(self) -> None:
        """Close and delete the scratch file."""
        self._file.close()
        self.path.unlink(missing_ok=True)
