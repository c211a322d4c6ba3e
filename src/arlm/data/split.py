"""Train/val/test splitting: seeded by document when there are many, contiguous fractions otherwise.

The rule needs only each document's length and a digest of its text (`plan_splits`), so a corpus larger
than memory is split with a few bytes a document; `split_documents` applies it to documents in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from arlm.data.corpus import Document
from arlm.errors import ArlmError

SPLITS = ("train", "val", "test")
MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT = 20
DIGEST_BYTES = 16  # of the text's SHA-256: what tells exact duplicates apart


def text_digest(text: str) -> bytes:
    """The digest split planning compares documents by."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:DIGEST_BYTES]


@dataclass
class SplitPart:
    """The documents of one split, in order; in contiguous mode the first and last may be cut."""

    docs: np.ndarray  # (n,) int64 document indices
    first_start: int = 0  # character where the first document starts
    last_end: int = -1  # character where the last document ends; -1: at its end

    def segments(self, chars: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """(document, start, end) character ranges, in order; chars holds each document's length."""
        last = len(self.docs) - 1
        for block in range(0, len(self.docs), 1 << 16):  # no Python list of every index at once
            ids = self.docs[block : block + (1 << 16)]
            for k, (doc, length) in enumerate(zip(ids.tolist(), chars[ids].tolist()), block):
                end = self.last_end if k == last and self.last_end >= 0 else length
                yield doc, (self.first_start if k == 0 else 0), end


@dataclass
class SplitPlan:
    """Documents per split, how they were cut, and how many exact duplicates were dropped."""

    parts: dict[str, SplitPart] = field(default_factory=dict)
    mode: str = "documents"
    duplicates_dropped: int = 0

    def items(self) -> list[tuple[str, SplitPart]]:
        """(name, part) for each split, in the order train, val, test."""
        return [(name, self.parts[name]) for name in SPLITS]

    def holds_shares(self, chars: np.ndarray, fractions: dict[str, float]) -> bool:
        """Whether each named split holds at least half its fraction of the kept documents' characters."""
        held = {name: int(chars[part.docs].sum()) for name, part in self.parts.items()}
        total = sum(held.values())
        return all(held[name] >= fraction * total / 2 for name, fraction in fractions.items())


def plan_splits(
    chars: np.ndarray, digests: np.ndarray, val_fraction: float, test_fraction: float, seed: int, mode: str = "auto"
) -> SplitPlan:
    """Assign documents (their lengths in characters and digests, dtype S16) to splits so that no text
    appears in two of them; auto: by document with 20 or more, unless their lengths are too uneven for the
    fractions (val or test under half its share), else contiguous."""
    if mode == "auto" and len(chars) >= MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT:
        with contextlib.suppress(ArlmError):  # (too few documents of a fitting length for a split)
            plan = _by_document(chars, digests, val_fraction, test_fraction, seed)
            if plan.holds_shares(chars, {"val": val_fraction, "test": test_fraction}):
                return plan
    if mode in ("auto", "contiguous"):
        return _contiguous(chars, val_fraction, test_fraction)
    return _by_document(chars, digests, val_fraction, test_fraction, seed)


def _by_document(
    chars: np.ndarray, digests: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> SplitPlan:
    """Seeded shuffle of unique documents; test then val take documents until they hold their share of
    characters (passing over one that would take them past twice their share), train takes the rest. Exact
    duplicates are dropped so no text lands in two splits."""
    _, first = np.unique(digests, return_index=True)  # first occurrence of each distinct text
    order = array("q")
    order.frombytes(np.sort(first).astype(np.int64).tobytes())
    random.Random(seed).shuffle(order)  # the same permutation as shuffling the documents themselves
    shuffled = np.frombuffer(order, dtype=np.int64)
    lengths = chars[shuffled]
    left = np.ones(len(shuffled), dtype=bool)  # (n,) not yet in val or test
    parts = {}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        taken = _take_share(lengths, left, fraction * int(lengths.sum())) if fraction > 0 else []
        left[taken] = False
        parts[name] = SplitPart(shuffled[taken])
        if fraction > 0 and not len(taken):
            raise ArlmError(
                f"only {len(order)} distinct documents: too few for a {name} split; "
                "use --data.split contiguous or add documents"
            )
    parts["train"] = SplitPart(shuffled[left])
    return SplitPlan(parts, "documents", len(chars) - len(order))


def _take_share(lengths: np.ndarray, left: np.ndarray, share: float) -> list[int]:
    """Positions of documents not yet taken, in order, until they hold `share` characters; a document that would
    take them past twice the share is passed over (the smallest is taken if none fits); one stays for train."""
    taken, held, room = [], 0, int(left.sum()) - 1
    for k in np.flatnonzero(left).tolist():
        if held >= share or len(taken) >= room:
            break
        if held + int(lengths[k]) <= 2 * share:
            taken.append(k)
            held += int(lengths[k])
    if not taken and room > 0:
        candidates = np.flatnonzero(left)
        taken = [int(candidates[np.argmin(lengths[candidates])])]
    return taken


def _contiguous(chars: np.ndarray, val_fraction: float, test_fraction: float) -> SplitPlan:
    """nanoGPT-style: the first (1 - val - test) of the characters train, then val, then test."""
    ends = np.cumsum(chars, dtype=np.int64)
    starts = ends - chars
    total = int(ends[-1]) if len(ends) else 0
    cut_val = int(total * (1.0 - val_fraction - test_fraction))
    cut_test = int(total * (1.0 - test_fraction))
    bounds = {"train": (0, cut_val), "val": (cut_val, cut_test), "test": (cut_test, total)}
    parts = {}
    for name, (lo, hi) in bounds.items():
        docs = np.flatnonzero(np.maximum(starts, lo) < np.minimum(ends, hi))
        if not len(docs):
            parts[name] = SplitPart(docs)
            continue
        first, last = int(docs[0]), int(docs[-1])
        parts[name] = SplitPart(docs, max(lo - int(starts[first]), 0), min(hi, int(ends[last])) - int(starts[last]))
    return SplitPlan(parts, "contiguous")


@dataclass
class Splits:
    """Documents per split, how they were cut, and how many exact duplicates were dropped."""

    train: list[Document] = field(default_factory=list)
    val: list[Document] = field(default_factory=list)
    test: list[Document] = field(default_factory=list)
    mode: str = "documents"
    duplicates_dropped: int = 0

    def items(self) -> list[tuple[str, list[Document]]]:
        """(name, documents) for each split, in the order train, val, test."""
        return [(name, getattr(self, name)) for name in SPLITS]


def split_documents(
    docs: list[Document], val_fraction: float, test_fraction: float, seed: int, mode: str = "auto"
) -> Splits:
    """Assign documents held in memory to splits by plan_splits' rule."""
    chars = np.array([len(d.text) for d in docs], dtype=np.int64)
    digests = np.array([text_digest(d.text) for d in docs], dtype=f"S{DIGEST_BYTES}")
    plan = plan_splits(chars, digests, val_fraction, test_fraction, seed, mode)
    splits = Splits(mode=plan.mode, duplicates_dropped=plan.duplicates_dropped)
    for name, part in plan.items():
        for i, start, end in part.segments(chars):
            doc = docs[i]
            whole = (start, end) == (0, len(doc.text))
            getattr(splits, name).append(doc if whole else Document(f"{doc.name}[{start}:{end}]", doc.text[start:end]))
    return splits
