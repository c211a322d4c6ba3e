from arlm.config import DataConfig
from arlm.data.corpus import Document
from arlm.data.normalize import Normalizer, corpus_text, normalize_documents, normalize_text


def test_each_switch_does_one_thing():
    text = "Ｆｉｌｅ\u200b  Name\t\t here\r\n\n\n\nEnd"
    assert normalize_text(text, DataConfig()) == text
    assert normalize_text("e\u0301", DataConfig(unicode="NFC")) == "\u00e9"
    assert normalize_text("Ｆｉ\ufb01", DataConfig(unicode="NFKC")) == "Fifi"
    assert normalize_text("ABC", DataConfig(lowercase=True)) == "abc"
    assert normalize_text("a\u200bb\x07c\r\n", DataConfig(strip_control=True)) == "abc\n"
    assert normalize_text("a  \t b \nc\n\n\n\nd", DataConfig(collapse_whitespace=True)) == "a b\nc\n\nd"


def test_report_counts_changes():
    docs = [Document("a", "ABC\x07"), Document("b", "xyz")]
    out, report = normalize_documents(docs, DataConfig(lowercase=True, strip_control=True))
    assert [d.text for d in out] == ["abc", "xyz"]
    assert report.chars_before == 7 and report.chars_after == 6
    assert report.removed == {"strip_control": 1, "lowercase": 0}
    assert report.edited == {"strip_control": 0, "lowercase": 3}
    assert "7 -> 6 characters" in report.describe()


def test_counts_accumulate_over_pieces_of_a_stream():
    config = DataConfig(lowercase=True, strip_control=True, collapse_whitespace=True)
    pieces = ["ABC\x07 \n", "Déf\n\n\n\n", "GHI  jkl"]
    normalizer = Normalizer(config)
    streamed = "".join(normalizer(p) for p in pieces)
    whole, report = normalize_documents([Document("a", "".join(pieces))], config)
    assert streamed == whole[0].text
    assert normalizer.report.chars_before == report.chars_before == 21
    assert normalizer.report.chars_after == report.chars_after
    assert normalizer.report.removed == report.removed
    assert normalizer.report.edited == {"strip_control": 0, "lowercase": 7, "collapse_whitespace": 0}


def test_strip_control_keeps_the_format_characters_that_are_part_of_the_text():
    """ZWJ joins emoji sequences (a family, a rainbow flag), ZWNJ is orthography (Persian), tags spell a subdivision
    flag; a zero-width space, a byte-order mark and a soft hyphen's kin go."""
    kept = "👨\u200d👩\u200d👧 🏳️\u200d🌈 می\u200cخواهم 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    assert normalize_text(kept + "\u200b\ufeff\u2060", DataConfig(strip_control=True)) == kept


def test_a_line_end_of_any_convention_stays_a_line_end():
    lf = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n"
    for ending in ("\r\n", "\r", "\u2028"):
        text = lf.replace("\n", ending)
        assert normalize_text(text, DataConfig(collapse_whitespace=True)) == lf
    for ending in ("\r\n", "\r", "\x85", "\x0b", "\x0c"):  # strip_control drops control characters, not lines
        assert normalize_text(lf.replace("\n", ending), DataConfig(strip_control=True)) == lf


def test_corpus_text_of_one_file_is_that_file_and_of_several_their_join(tmp_path):
    """eval perplexity --file scores a file as given (its leading and trailing newlines were dropped)."""
    (tmp_path / "a.txt").write_text("\n\n\nLeading newlines then text.\n\n\n")
    assert corpus_text(str(tmp_path / "a.txt"), DataConfig()) == "\n\n\nLeading newlines then text.\n\n\n"
    (tmp_path / "b.txt").write_text("Second.\n")
    assert corpus_text(str(tmp_path), DataConfig()) == "\n\n\nLeading newlines then text.\n\n\n"[3:-3] + "\n\nSecond."
