import json

import pytest

from arlm.data.corpus import builtin_documents, load_documents
from arlm.errors import ArlmError


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
    with pytest.raises(ArlmError, match=r"c.jsonl:2 has no field 'text'"):
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
