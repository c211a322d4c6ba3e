"""The incremental detokenizer: at every id, exactly the whole list's decoded text, with the window decoded kept short
where the tokenizer's text adds up at a cut (byte-level BPE, char), and whole where it does not (SentencePiece)."""

import random

import pytest

from arlm.data.tokenizers import HFTokenizer, VocabTokenizer, load_tokenizer
from arlm.decoding import detokenize
from arlm.decoding.detokenize import Detokenizer
from tests.helpers import tiny_text


def _metaspace(tmp_path):
    """A SentencePiece-like tokenizer: its decoder strips the '▁' of the first token of whatever it decodes."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(tiny_text(10), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    backend.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(tmp_path)


def _ids(tok, rng: random.Random, n: int) -> list[int]:
    """Real text's ids with random ids (partial UTF-8 bytes, special tokens) spliced in."""
    text = "".join(
        f"{line[:40]} ça va? 日本語の文章 😀🇫🇷👩‍👩‍👧 " for line in tiny_text(8)
    )  # (characters of several bytes)
    ids = tok.encode(text)[:n]
    for _ in range(n // 8):
        ids.insert(rng.randrange(len(ids)), rng.randrange(tok.vocab_size))
    return ids


@pytest.mark.parametrize("kind", ["bpe", "char", "metaspace"])
def test_every_push_gives_the_whole_texts_decoding(kind, tmp_path):
    tok = {
        "bpe": lambda: HFTokenizer.train_bpe(tiny_text(12), 400),
        "char": lambda: VocabTokenizer.train("char", tiny_text(12), 200),
        "metaspace": lambda: _metaspace(tmp_path),
    }[kind]()
    ids = _ids(tok, random.Random(7), 400)
    decoded = Detokenizer(tok)
    for i, token in enumerate(ids):
        assert decoded.push(token) == tok.decode(ids[: i + 1]), i
    assert decoded.text == tok.decode(ids) and decoded.ids == ids
    if kind != "metaspace":  # the head moved on: what each push decodes stays within a window
        assert len(ids) - decoded._cut <= detokenize.WINDOW


def test_a_cut_that_would_change_the_text_keeps_the_window_whole(tmp_path):
    """SentencePiece drops the '▁' of the first token it decodes: no cut before a word's first piece."""
    tok = _metaspace(tmp_path)
    ids = tok.encode(" ".join(tiny_text(8)))[:200]
    decoded = Detokenizer(tok)
    for token in ids:
        decoded.push(token)
    head = tok.decode(ids[: decoded._cut])
    assert decoded._head == head and decoded.text == head + tok.decode(ids[decoded._cut :]) == tok.decode(ids)
