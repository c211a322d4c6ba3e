import json
import re

import pytest

from arlm.data.corpus import builtin_documents, load_documents, read_blocks, read_text
from arlm.errors import ArlmError


@pytest.mark.slow
def test_builtin_corpus_is_pythons_documentation():
    topics = builtin_documents("builtin:topics")
    assert len(topics) == 79
    assert sum(len(d.text) for d in topics) > 400_000
    docstrings = builtin_documents("builtin:docstrings")
    assert len(docstrings) > 100
    assert len(builtin_documents()) == len(topics) + len(docstrings)


def test_file_folder_glob_and_jsonl(tmp_path, corpus_dir):
    one = tmp_path / "one.txt"
    one.write_text("hello world\n", encoding="utf-8")
    assert [d.text for d in load_documents(str(one))] == ["hello world\n"]
    assert len(load_documents(str(corpus_dir))) == 40
    assert len(load_documents(str(corpus_dir / "doc0*.txt"))) == 10
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"doc {i}"}) for i in range(3)) + "\n", encoding="utf-8")
    docs = load_documents(str(jsonl), text_field="body")
    assert [d.text for d in docs] == ["doc 0", "doc 1", "doc 2"]


def test_jsonl_without_field_names_the_line(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "a"}\n{"other": "b"}\n', encoding="utf-8")
    with pytest.raises(ArlmError, match=r"c.jsonl:2 has no field 'text'; data.text_field names another"):
        load_documents(str(jsonl))
    jsonl.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    with pytest.raises(ArlmError, match=r"c.jsonl:1 has no field 'text'; it looks like chat data"):
        load_documents(str(jsonl))


def test_missing_empty_binary_and_bad_utf8(tmp_path):
    with pytest.raises(ArlmError, match="does not exist"):
        load_documents(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ArlmError, match="holds no text"):
        load_documents(str(empty))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(ArlmError, match=r"looks binary \(NUL byte at offset 3\)"):
        load_documents(str(binary))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf" + b"\xe9 au lait")
    with pytest.raises(ArlmError, match="not valid UTF-8 at byte offset 3"):
        load_documents(str(latin))
    replaced = load_documents(str(latin), encoding_errors="replace")
    assert replaced[0].text == "caf\ufffd au lait"


def test_files_stream_in_blocks_with_exact_offsets_and_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("arlm.data.corpus.READ_BYTES", 5)  # blocks cut through characters and CRLFs
    text = "a\r\nb é 東京 👍\r\n" * 20
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_text(path) == text  # the byte-order mark is dropped
    bad = tmp_path / "bad.txt"
    bad.write_bytes(text.encode("utf-8") + b"\xe9 x")
    with pytest.raises(ArlmError, match=f"not valid UTF-8 at byte offset {len(text.encode('utf-8'))};"):
        read_text(bad)
    bad.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8") + b"\xe9 x")  # the file's offset, after its BOM
    with pytest.raises(ArlmError, match=f"not valid UTF-8 at byte offset {3 + len(text.encode('utf-8'))};"):
        read_text(bad)
    truncated = tmp_path / "cut.txt"
    truncated.write_bytes(b"ok " + "東".encode()[:2])
    with pytest.raises(ArlmError, match="at byte offset 3;"):
        read_text(truncated)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(b'{"text": "\\u00e9 one"}\r\n\r\n{"text": "two"}\r\n{"nope": 1}\r\n')
    with pytest.raises(ArlmError, match=r"c.jsonl:4 has no field 'text'"):
        load_documents(str(jsonl))


def test_a_lone_surrogate_escape_in_a_jsonl_record_is_one_line_or_replaced(tmp_path):
    """`"\\ud800"` is valid JSON but not text: prepare crashed in a traceback where it wrote the text out."""
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"text": "ok \\ud83d\\ude00"}\n{"text": "lone \\ud800 here", "n": ["\\udfff"]}\n', encoding="utf-8"
    )
    with pytest.raises(ArlmError, match=r"s.jsonl:2 holds a lone surrogate escape \(\\ud800\)") as info:
        load_documents(str(path))
    assert "\n" not in str(info.value)
    docs = load_documents(str(path), encoding_errors="replace")
    assert [d.text for d in docs] == ["ok \U0001f600", "lone \ufffd here"]


def test_jsonl_lines_end_at_newline_only_so_unicode_line_separators_stay_in_the_text(tmp_path):
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\x0bh\x0ci\x1cj"]  # all of them str.splitlines breaks
    jsonl = tmp_path / "ls.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n", encoding="utf-8")
    assert [d.text for d in load_documents(str(jsonl))] == texts
    assert [d.name for d in load_documents(str(jsonl))][-1] == f"{jsonl}:4"


def test_separator_and_size_make_documents_of_one_file(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("First part.\nStill first.\n\n\nSecond part.\n  \nThird, long: " + "x" * 25, encoding="utf-8")
    docs = load_documents(str(book), separator="blank")
    assert [d.text for d in docs] == ["First part.\nStill first.", "Second part.", "Third, long: " + "x" * 25]
    sized = load_documents(str(book), separator="blank", max_chars=20)
    assert [d.text for d in sized][:3] == ["First part.\n", "Still first.", "Second part."]
    assert all(len(d.text) <= 20 for d in sized)
    by_regex = [d.text for d in load_documents(str(book), separator=r"\n(?=Second|Third)")]
    assert [t[:6] for t in by_regex] == ["First ", "Second", "Third,"]


def test_a_glob_reaching_into_the_output_or_its_temporary_is_refused(tmp_path, monkeypatch):
    from arlm.data.corpus import check_source_apart

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a.txt").write_text("some text\n", encoding="utf-8")
    for pattern in ("w/**", "w/*/*", f"{tmp_path}/w/**/*.tmp", "w/data*/**"):  # out w/data, first w/data.tmp-PID
        with pytest.raises(
            ArlmError, match=f"^data.source {re.escape(repr(pattern))} matches files inside --out w/data "
        ):
            check_source_apart(pattern, "w/data", "--out")
    for pattern in ("w/*.txt", "w/a*", "other/**", "w/x*/**"):  # cannot reach w/data/... nor w/data.tmp-PID/...
        check_source_apart(pattern, "w/data", "--out")


def test_a_path_is_that_path_though_it_looks_like_a_glob(tmp_path):
    for name in ("shake [v2].txt", "what?.txt", "a*b.txt"):
        (tmp_path / name).write_text(f"{name}\n", encoding="utf-8")
    (tmp_path / "whatX.txt").write_text("other\n", encoding="utf-8")
    for name in ("shake [v2].txt", "what?.txt", "a*b.txt"):
        assert [d.text for d in load_documents(str(tmp_path / name))] == [f"{name}\n"]
    assert len(load_documents(str(tmp_path / "what?.t*"))) == 2  # a pattern of no such path still globs


def test_nul_anywhere_upper_case_jsonl_and_a_file_gone_while_read(tmp_path, monkeypatch):
    monkeypatch.setattr("arlm.data.corpus.READ_BYTES", 64)
    late = tmp_path / "late.txt"
    late.write_bytes(b"\xef\xbb\xbf" + b"x" * 1000 + b"\x00 more")
    with pytest.raises(ArlmError, match=r"looks binary \(NUL byte at offset 1003\)"):  # (counted from the file's start)
        read_text(late)
    upper = tmp_path / "D.JSONL"
    upper.write_text(json.dumps({"body": "one"}) + "\n", encoding="utf-8")
    assert [d.text for d in load_documents(str(upper), text_field="body")] == ["one"]
    gone = tmp_path / "gone.txt"
    gone.write_text("y" * 1000, encoding="utf-8")
    blocks = read_blocks(gone)
    gone.unlink()
    with pytest.raises(ArlmError, match=r"^cannot read .*gone.txt \(No such file or directory\); prepare again"):
        list(blocks)


def test_a_file_linked_twice_in_a_folder_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("one text\n", encoding="utf-8")
    (tmp_path / "b.txt").symlink_to("a.txt")
    (tmp_path / "c.txt").write_text("another\n", encoding="utf-8")
    for source in (tmp_path, tmp_path / "*.txt"):
        assert [d.text for d in load_documents(str(source))] == ["one text\n", "another\n"]
