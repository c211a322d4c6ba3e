import pytest

from arlm.data.tokenizers import VocabTokenizer
from arlm.decoding.show import GREEN, RESET, render_drafts


def test_draft_tokens_are_bracketed_or_coloured():
    tok = VocabTokenizer.train("char", ["abcdef"], 0)
    ids = tok.encode("abcdef")
    marks = [True, True, False, True, False, False]
    assert render_drafts(tok, ids, marks, color=False) == "[ab]c[d]ef"
    assert render_drafts(tok, ids, marks, color=True) == f"{GREEN}ab{RESET}c{GREEN}d{RESET}ef"


def test_only_the_text_before_end_is_rendered():
    tok = VocabTokenizer.train("char", ["abcdef"], 0)
    ids = tok.encode("abcdef")
    marks = [True, True, False, True, True, False]
    assert render_drafts(tok, ids, marks, color=False, end=4) == "[ab]c[d]"  # e.g. cut before the stop string "ef"
    assert render_drafts(tok, ids, marks, color=False, end=2) == "[ab]"


@pytest.mark.real_model
@pytest.mark.parametrize("text", ["東京は日本の首都です。", "🙂🎉 and é", "それぞ"])
def test_characters_spelled_by_several_tokens_come_out_whole(smollm2, text):
    """A byte-level BPE spells a CJK character or an emoji in several tokens: the marked text is the decoded text
    (brackets aside) whatever tokens the draft gave, and a character cut at the end shows as the decoding shows it."""
    tok = smollm2.tokenizer
    ids = tok.encode(text)
    ids = ids + tok.encode("🙂")[:1]  # the last character cut after its first token, as --max-new-tokens may cut it
    for pattern in ([True, False], [False, True], [True, True, False]):
        drafted = [pattern[i % len(pattern)] for i in range(len(ids))]
        shown = render_drafts(tok, ids, drafted, color=False)
        assert shown.replace("[", "").replace("]", "") == tok.decode(ids)
