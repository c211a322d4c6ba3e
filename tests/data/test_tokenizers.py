import json
import re

import pytest

from arlm.data.tokenizers import EOS, HFTokenizer, VocabTokenizer, load_tokenizer, train_tokenizer
from arlm.errors import ArlmError
from tests.helpers import tiny_text

SAMPLE = "Hello,  world!\n\tTabs & ünïcödé — 3.14 émoji 🙂 end.\n"


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_round_trip_and_save_load(tmp_path, kind):
    texts = tiny_text(30) + [SAMPLE]
    tok = train_tokenizer(kind, texts, 20000 if kind == "word" else 600)  # word: no unknowns here
    for text in texts[:5] + [SAMPLE]:
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)
    assert (again.bos_id, again.eos_id, again.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert tok.eos_id is not None and tok.pad_id is not None and tok.eos_id != tok.pad_id


def test_special_tokens_are_skipped_when_decoding():
    tok = train_tokenizer("bpe", tiny_text(10), 400)
    ids = [tok.bos_id] + tok.encode("abc") + [tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "abc"


def test_word_tokenizer_caps_vocabulary_and_counts_unknowns():
    tok = VocabTokenizer.train("word", ["a a a b b c d e f"], vocab_size=5)
    assert tok.vocab_size == 5  # 3 specials + 'a' + ' '
    ids = tok.encode("a b")
    assert ids == [tok.stoi["a"], tok.stoi[" "], tok.unk_id]
    assert tok.decode(ids) == "a "  # the unknown symbol is special, so it decodes to nothing


def test_char_tokenizer_maps_unseen_characters_to_unknown():
    tok = VocabTokenizer.train("char", ["abc"], vocab_size=0)
    assert tok.encode("abz") == [tok.stoi["a"], tok.stoi["b"], tok.unk_id]


def test_bpe_is_byte_level_and_compresses():
    texts = tiny_text(40)
    tok = train_tokenizer("bpe", texts, 1024)
    assert isinstance(tok, HFTokenizer)
    text = "\n".join(texts)
    assert len(tok.encode(text)) < len(text.encode()) / 2.5
    assert tok.decode(tok.encode("\x00 \U0010ffff")) == "\x00 \U0010ffff"  # any bytes survive
    sizes = tok.token_bytes()
    ids = tok.encode(SAMPLE)
    assert int(sizes[ids].sum()) == len(SAMPLE.encode())


def test_tokenizer_json_by_path(tmp_path):
    tok = train_tokenizer("bpe", tiny_text(10), 400)
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    loaded = train_tokenizer(str(tmp_path / "tokenizer.json"), [], 0)
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)
    assert loaded.eos_id == tok.backend.token_to_id(EOS)  # guessed from the added special tokens


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(ArlmError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ArlmError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(bad)


def test_a_piece_of_a_character_is_labelled_by_its_bytes():
    """Byte-level BPE cuts a character into tokens whose text alone is U+FFFD; their label names the bytes, as
    llama.cpp's <0xNN> does, and reads back to them; a whole character's token is labelled by its text."""
    tok = train_tokenizer("bpe", tiny_text(40), 300)
    ids = tok.encode("🙂 ünï")
    partial = [i for i in ids if "\ufffd" in tok.token_text(i)]
    assert partial  # 🙂 is four bytes, none of them merged at this vocabulary
    for i in ids:
        label, raw = tok.piece_label(i), tok.piece_bytes(i)
        if i not in partial:
            assert label == tok.token_text(i)
            continue
        assert "\ufffd" not in label and "<0x" in label
        back = re.sub(rb"<0x([0-9A-F]{2})>", lambda m: bytes([int(m[1], 16)]), label.encode("utf-8"))
        assert back == raw
    assert "".join(tok.piece_label(i) for i in tok.encode("🙂")) == "<0xF0><0x9F><0x99><0x82>"


@pytest.mark.parametrize("kind", ["char", "word"])
def test_an_unknown_token_leaves_bits_per_byte_unknown(kind):
    """<unk> stands for text of any length: a figure over the other tokens' bytes alone would read too high."""
    from arlm.evaluation.perplexity import EvalResult

    tok = train_tokenizer(kind, ["abc abc cab"], 50)
    sizes = tok.token_bytes()
    known, unknown = tok.encode("abc cab"), tok.encode("abc \u00e9t\u00e9")
    assert tok.unk_id in unknown and int(sizes[known].sum()) == len("abc cab")
    assert EvalResult(2.0, len(known), int(sizes[known].sum())).bits_per_byte is not None
    assert EvalResult(2.0, len(unknown), int(sizes[unknown].sum())).bits_per_byte is None


def _sentencepiece_like(metaspace: bool) -> HFTokenizer:
    """A Llama-style tokenizer: BPE with byte fallback (`<0xNN>` tokens), `▁` for spaces, as Llama 2, Mistral or Gemma
    lay theirs out (the decoder as a Metaspace, or as their Replace / ByteFallback / Fuse / Strip sequence)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", "h", "i", "▁h", "▁hi"]:
        vocab[piece] = len(vocab)
    model = models.BPE(vocab, [("▁", "h"), ("▁h", "i")], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    backend = Backend(model)
    if metaspace:
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    else:
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        backend.decoder = decoders.Sequence(steps)
    backend.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return HFTokenizer(backend, bos="<s>", eos="</s>")


@pytest.mark.parametrize("metaspace", [False, True])
def test_a_byte_fallback_tokenizers_pieces_are_the_bytes_they_stand_for(metaspace):
    """Its byte tokens read as U+FFFD's three bytes each and `▁` as nothing: bits per byte over Japanese came out
    2.5x too low, logprobs' bytes and labels wrong."""
    tok = _sentencepiece_like(metaspace)
    text = "hi hi 本🎉"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and [tok.backend.id_to_token(i) for i in ids][:3] == ["▁hi", "▁hi", "▁"]
    assert b"".join(tok.piece_bytes(i) for i in ids).strip() == text.encode("utf-8")  # (one leading "▁" added)
    assert tok.piece_bytes(tok.encode("本")[-1]) == b"\xac" and tok.piece_label(tok.encode("本")[-1]) == "<0xAC>"
    table = tok.token_bytes()
    assert sum(table[i] for i in ids) == len(text.encode("utf-8")) + 1
    assert table[tok.eos_id] == 0
