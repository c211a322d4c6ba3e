import random

import numpy as np
import pytest

from arlm.data.corpus import Document
from arlm.data.split import plan_splits, split_documents, text_digest
from arlm.errors import ArlmError
from tests.helpers import tiny_text


def _docs():
    texts = tiny_text(60)
    docs = [Document(f"d{i}", t) for i, t in enumerate(texts)]
    return docs + [Document("dup-a", texts[3]), Document("dup-b", texts[7])]  # exact duplicates


def test_document_split_is_disjoint_and_drops_duplicates():
    docs = _docs()
    unique = {d.text for d in docs}
    splits = split_documents(docs, 0.1, 0.1, seed=1)
    assert splits.mode == "documents"
    assert splits.duplicates_dropped == len(docs) - len(unique) >= 2
    texts = {name: {d.text for d in docs} for name, docs in splits.items()}
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    assert sum(len(v) for v in texts.values()) == len(unique)
    total = sum(len(t) for t in unique)
    for name in ("val", "test"):
        share = sum(len(t) for t in texts[name]) / total
        assert 0.1 <= share < 0.2


def test_document_split_is_seeded():
    a = split_documents(_docs(), 0.1, 0.1, seed=1)
    b = split_documents(_docs(), 0.1, 0.1, seed=1)
    c = split_documents(_docs(), 0.1, 0.1, seed=2)
    assert [d.name for d in a.val] == [d.name for d in b.val]
    assert [d.name for d in a.val] != [d.name for d in c.val]


def test_contiguous_split_partitions_the_text_exactly():
    text = "".join(tiny_text(5))
    splits = split_documents([Document("book", text)], 0.1, 0.05, seed=0)
    assert splits.mode == "contiguous"
    joined = "".join(d.text for _, docs in splits.items() for d in docs)
    assert joined == text
    assert len(splits.train[0].text) == int(len(text) * 0.85)
    assert splits.val[0].text == text[int(len(text) * 0.85) : int(len(text) * 0.95)]


def test_contiguous_split_across_documents_cuts_one_document():
    docs = [Document(f"d{i}", t) for i, t in enumerate(tiny_text(4))]
    splits = split_documents(docs, 0.25, 0.0, seed=0, mode="contiguous")
    assert "".join(d.text for d in splits.train + splits.val) == "".join(d.text for d in docs)


def test_too_few_documents_for_a_document_split():
    docs = [Document("a", "x" * 10), Document("b", "y" * 10)]
    with pytest.raises(ArlmError, match="too few for a"):
        split_documents(docs, 0.1, 0.1, seed=0, mode="documents")


def test_plan_from_lengths_and_digests_is_the_seeded_shuffle_of_the_documents():
    """The rule arlm always had, written out on the documents: a seeded shuffle of the distinct documents,
    test then val take documents until they hold their share of characters."""
    docs = _docs()
    unique, seen = [], set()
    for doc in docs:  # first occurrences, in order
        if doc.text not in seen:
            unique.append(doc)
            seen.add(doc.text)
    random.Random(5).shuffle(unique)
    total, taken, cursor = sum(len(d.text) for d in unique), {}, 0
    for name, fraction in (("test", 0.15), ("val", 0.1)):
        start, chars = cursor, 0
        while cursor < len(unique) - 1 and (cursor == start or chars < fraction * total):
            chars += len(unique[cursor].text)
            cursor += 1
        taken[name] = unique[start:cursor]
    taken["train"] = unique[cursor:]
    chars = np.array([len(d.text) for d in docs])
    plan = plan_splits(chars, np.array([text_digest(d.text) for d in docs]), 0.1, 0.15, seed=5)
    for name in ("train", "val", "test"):
        assert [docs[i].name for i in plan.parts[name].docs] == [d.name for d in taken[name]]
        assert [(s, e) for _, s, e in plan.parts[name].segments(chars)] == [(0, len(d.text)) for d in taken[name]]


def test_one_document_larger_than_a_share_stays_in_train_and_auto_keeps_the_fractions():
    """A book and 30 one-line notes: test and val pass over the book (it would hold 99.9% of the text); by
    document they then hold a sliver of their share, so auto cuts the text contiguously instead."""
    docs = [Document("book", "a long book. " * 20_000)]
    docs += [Document(f"note{i}", f"note number {i} with a little text in it\n") for i in range(30)]
    chars = np.array([len(d.text) for d in docs])
    digests = np.array([text_digest(d.text) for d in docs])
    for seed in range(10):
        plan = plan_splits(chars, digests, 0.0, 0.05, seed=seed, mode="documents")
        assert plan.parts["train"].docs.tolist() == [0] and len(plan.parts["test"].docs) == 30
        auto = plan_splits(chars, digests, 0.05, 0.05, seed=seed)
        held = {name: sum(e - s for _, s, e in part.segments(chars)) for name, part in auto.items()}
        assert auto.mode == "contiguous" and held["test"] == pytest.approx(0.05 * chars.sum(), abs=2)
    even = plan_splits(np.full(40, 100), np.array([text_digest(str(i)) for i in range(40)]), 0.05, 0.05, seed=0)
    assert even.mode == "documents"  # (lengths that fit the shares: by document, as always)
