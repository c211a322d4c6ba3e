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
