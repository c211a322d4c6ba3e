import random

from arlm.data.split import text_digest
from arlm.data.textstore import TextStore


def test_any_character_range_reads_back_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr("arlm.data.textstore.READ_BYTES", 7)  # blocks cut through multi-byte characters
    docs = ["plain ascii text\nsecond line", "", "héllo wörld — ΟΔΥΣΣΕΥΣ 東京 👍🏽\n" * 5, "x"]
    store = TextStore(tmp_path / "text.tmp")
    for doc in docs:
        for i in range(0, len(doc), 5):  # written in parts
            store.write(doc[i : i + 5])
        store.end_document()
    assert len(store) == 3  # the empty document is dropped
    kept = [d for d in docs if d]
    assert store.chars.tolist() == [len(d) for d in kept]
    assert store.digests.tolist() == [text_digest(d) for d in kept]
    assert [store.doc_bytes(i) for i in range(3)] == [len(d.encode("utf-8")) for d in kept]
    rng = random.Random(0)
    for _ in range(200):
        i = rng.randrange(3)
        start = rng.randint(0, len(kept[i]) - 1)
        end = rng.randint(start + 1, len(kept[i]))
        pieces = list(store.pieces(i, start, end, 9))
        assert "".join(p.text for p in pieces) == kept[i][start:end]
        assert [p.ends for p in pieces] == [False] * (len(pieces) - 1) + [True]
    store.close()
    assert not (tmp_path / "text.tmp").exists()
