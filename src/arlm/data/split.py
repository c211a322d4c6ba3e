"""Train/val/test splitting: seeded by document when there are many, contiguous fractions otherwise."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from arlm.data.corpus import Document
from arlm.errors import ArlmError

SPLITS = ("train", "val", "test")
MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT = 20


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
    """Assign documents to splits so that no text appears in two of them."""
    if mode == "auto":
        mode = "documents" if len(docs) >= MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT else "contiguous"
    if mode == "contiguous":
        return _contiguous(docs, val_fraction, test_fraction)
    return _by_document(docs, val_fraction, test_fraction, seed)


def _by_document(docs: list[Document], val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Seeded shuffle of unique documents; test then val take documents until they hold their share of
    characters, train takes the rest. Exact duplicates are dropped so no text lands in two splits."""
    unique: dict[str, Document] = {}
    for doc in docs:
        unique.setdefault(hashlib.sha256(doc.text.encode("utf-8")).hexdigest(), doc)
    order = list(unique.values())
    random.Random(seed).shuffle(order)
    total = sum(len(d.text) for d in order)
    splits = Splits(mode="documents", duplicates_dropped=len(docs) - len(order))
    cursor = 0
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        taken, chars = [], 0
        while fraction > 0 and cursor < len(order) - 1 and (not taken or chars < fraction * total):
            taken.append(order[cursor])
            chars += len(order[cursor].text)
            cursor += 1
        setattr(splits, name, taken)
    splits.train = order[cursor:]
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction > 0 and not getattr(splits, name):
            raise ArlmError(
                f"only {len(order)} distinct documents: too few for a {name} split; "
                "use --data.split contiguous or add documents"
            )
    return splits


def _contiguous(docs: list[Document], val_fraction: float, test_fraction: float) -> Splits:
    """nanoGPT-style: the first (1 - val - test) of the characters train, then val, then test."""
    total = sum(len(d.text) for d in docs)
    cut_val = int(total * (1.0 - val_fraction - test_fraction))
    cut_test = int(total * (1.0 - test_fraction))
    bounds = {"train": (0, cut_val), "val": (cut_val, cut_test), "test": (cut_test, total)}
    splits = Splits(mode="contiguous")
    offset = 0
    for doc in docs:
        start, end = offset, offset + len(doc.text)
        for name, (lo, hi) in bounds.items():
            a, b = max(start, lo), min(end, hi)
            if a < b:
                piece = (
                    doc
                    if (a, b) == (start, end)
                    else Document(f"{doc.name}[{a - start}:{b - start}]", doc.text[a - start : b - start])
                )
                getattr(splits, name).append(piece)
        offset = end
    return splits
