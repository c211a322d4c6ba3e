import random
import re

import pytest

from arlm.config import DataConfig
from arlm.data.normalize import normalize_text
from arlm.data.pieces import (
    BLANK_LINES,
    Chunk,
    cut_by_size,
    join_documents,
    repiece,
    safe_cut,
    separate,
    separator_pattern,
)
from arlm.data.tokenizers import HFTokenizer
from arlm.errors import ArlmError
from tests.helpers import tiny_text

# traps for a cut: whitespace runs, final sigma, combining marks, zero-width and control characters, CRLF
TRAPS = ["ΟΔΥΣΣΕΥΣ", "σας", "cafe\u0301", "ﬁne", "Ｆｕｌｌ", "\u200bzw", "x\x07y", "don't", "'s", "東京", "123"]
PLAIN = ["the", "Line", "of", "text", "A", "x", "I", "12", "(a)", "end."]
SEPARATORS = ["", " ", "  ", "\n", "\n\n", "\n\n\n", " \n", "\r\n", "\t", "\n\u200b"]


def _tricky_text(n_words: int, seed: int) -> str:
    """Traps among plain words, so that most stretches of a hundred characters hold a safe cut."""
    rng = random.Random(seed)
    words = [rng.choice(TRAPS) if rng.random() < 0.3 else rng.choice(PLAIN) for _ in range(n_words)]
    return "".join(w + rng.choice(SEPARATORS if rng.random() < 0.3 else [" ", "\n"]) for w in words)


def _visible(ch: str) -> bool:
    return "!" <= ch <= "~" or ch.isalnum()


def _safe_boundary(left: str, right: str) -> bool:
    """After a line break between two visible characters, or before a space between a word and a letter."""
    line = left[-1] == "\n" and not left[-2].isspace() and _visible(right[0])
    word = right[0] == " " and _visible(left[-1]) and right[1].isascii() and right[1].isalpha()
    return line or word


def _streamed(text: str, seed: int, name: str = "f") -> list[Chunk]:
    """One document fed in random-sized chunks."""
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(text):
        step = rng.randint(1, 40)
        chunks.append(Chunk(name, text[i : i + step], False))
        i += step
    return [*chunks, Chunk(name, "", True)]


def _split_reference(text: str, pattern: str, max_chars: int) -> list[str]:
    """The in-memory rule: re.split at the separator, then cut each part at its last line break."""
    parts = [text]
    if pattern:
        regex, parts, start = re.compile(pattern), [], 0
        for m in regex.finditer(text):
            parts.append(text[start : m.start()])
            start = m.end()
        parts.append(text[start:])
    if max_chars:
        cut = []
        for part in parts:
            while len(part) > max_chars:
                k = part.rfind("\n", 0, max_chars) + 1 or max_chars
                cut.append(part[:k])
                part = part[k:]
            cut.append(part)
        parts = cut
    return parts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pattern", [BLANK_LINES, r"\n---+\n", r"(?<=\.)\n", r"\s*Σ+\s*"])
def test_streamed_separator_and_size_cuts_equal_the_in_memory_rule(monkeypatch, seed, pattern):
    monkeypatch.setattr("arlm.data.pieces.LOOKAHEAD", 32)  # small windows: many block boundaries
    text = "".join(t + random.Random(seed).choice(["\n\n", "\n---\n", ".\n", " \n \n"]) for t in tiny_text(6))
    text += _tricky_text(200, seed)
    stream = separate(_streamed(text, seed), re.compile(pattern))
    assert [t for _, t in join_documents(stream)] == _split_reference(text, pattern, 0)
    for max_chars in (1, 7, 300):
        stream = cut_by_size(separate(_streamed(text, seed), re.compile(pattern)), max_chars)
        assert [t for _, t in join_documents(stream)] == _split_reference(text, pattern, max_chars)


def test_blank_lines_of_every_line_end_convention_separate_documents():
    """Files with old Macs' CR line ends were one document under `doc_separator: blank` (only LF was known)."""
    blank = re.compile(BLANK_LINES)
    for end in ("\n", "\r\n", "\r"):
        assert blank.split(f"one{end}line{end}{end}two{end} {end}three") == ["one" + end + "line", "two", "three"]
    assert blank.split("a\r\nb\n\rc") == ["a\r\nb", "c"]  # a CRLF is one line end; LF then CR alone, two


def test_separator_matching_empty_text_or_invalid_is_refused():
    with pytest.raises(ArlmError, match="matches empty text"):
        list(separate([Chunk("f", "a\nb", True)], re.compile(r"\n*")))
    with pytest.raises(ArlmError, match="not a valid regular expression"):
        separator_pattern("(")
    assert separator_pattern("") is None
    assert separator_pattern("blank").pattern == BLANK_LINES


def test_repiece_keeps_short_documents_whole_and_drops_empty_ones():
    docs = ["short", "", "a bit longer than ten\nwith a second line", "x"]
    chunks = [c for d in docs for c in _streamed(d, 1)]
    pieces = list(repiece(chunks, 10))
    assert [t for _, t in join_documents(pieces)] == [d for d in docs if d]
    assert Chunk("f", "short", True) in pieces and Chunk("f", "x", True) in pieces
    assert all(len(p.text) <= 10 for p in pieces)


@pytest.mark.parametrize("seed", range(4))
def test_pieces_normalize_and_tokenize_as_the_whole(seed):
    """A long document cut at safe_cut places normalizes and tokenizes (byte-level BPE) exactly as the whole."""
    text = _tricky_text(3000, seed)
    pieces = [c.text for c in repiece(_streamed(text, seed), 64)]
    assert "".join(pieces) == text and len(pieces) > 100
    assert all(_safe_boundary(a, b) for a, b in zip(pieces, pieces[1:]))
    config = DataConfig(unicode="NFKC", lowercase=True, strip_control=True, collapse_whitespace=True)
    assert "".join(normalize_text(p, config) for p in pieces) == normalize_text(text, config)
    tokenizer = HFTokenizer.train_bpe([text], 400)
    normalized = normalize_text(text, config)
    parts = [c.text for c in repiece([Chunk("", normalized, True)], 64)]
    assert [i for p in parts for i in tokenizer.encode(p)] == tokenizer.encode(normalized)


def test_safe_cut_prefers_a_line_start_then_a_word_start():
    assert safe_cut("abc\ndef ghi", 20) == 11  # short enough: no cut
    assert safe_cut("abc\ndef ghi jkl", 9) == 4  # after the line break, not at the later word
    assert safe_cut("abc\n\ndef ghi jkl", 9) == 8  # a blank line is no safe line start; the word start is
    assert safe_cut("abcdefgh ijkl", 5) == 8  # nothing safe before the limit: the first place after it
    assert safe_cut("abcdefgh\nijkl", 5) == 9
    assert safe_cut("abcdefghijkl", 5) is None  # none yet: the piece waits for more text


def test_a_stretch_without_a_safe_place_is_one_piece_and_encodes_as_the_whole():
    """CJK prose has no line break or ASCII word start for thousands of characters: it was cut at the limit,
    and the shards' tokens there were not those of the whole document (nor what inference sees)."""
    prose = "どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で泣いていた事だけは記憶している。" * 8
    text = "An opening line.\n" + prose + " then English words\nand a line."
    pieces = [c.text for c in repiece(_streamed(text, 0), 64)]
    assert "".join(pieces) == text and any(prose in p for p in pieces)
    tokenizer = HFTokenizer.train_bpe([prose, text], 400)
    assert [i for p in pieces for i in tokenizer.encode(p)] == tokenizer.encode(text)
