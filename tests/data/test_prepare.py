import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arlm.config import DataConfig
from arlm.data.corpus import Document
from arlm.data.normalize import normalize_text
from arlm.data.pieces import BLANK_LINES
from arlm.data.prepare import check_split_size, data_fingerprint, load_prepared, prepare, prepare_settings
from arlm.data.shards import read_shard, write_shard
from arlm.data.split import split_documents
from arlm.data.tokenizers import EOS, HFTokenizer, load_tokenizer, train_tokenizer
from arlm.errors import ArlmError
from tests.data.test_pieces import _split_reference, _tricky_text
from tests.helpers import tiny_text, write_corpus


def test_prepare_writes_shards_report_and_reuses(tmp_path, corpus_dir):
    config = DataConfig(source=str(corpus_dir), tokenizer="word", vocab_size=300, val_fraction=0.1, test_fraction=0.1)
    lines = []
    data = prepare(config, tmp_path / "data", log=lines.append)
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    for split in ("train", "val", "test"):
        entry = report["splits"][split]
        assert entry["tokens"] == len(data.tokens(split)) > 0
        assert entry["documents"] == len(data.doc_starts(split)) - 1
        assert 0 <= entry["unknown_rate"] < 0.5
        assert entry["bytes_per_token"] > 1
    assert report["splits"]["train"]["unknown_rate"] > 0  # a 300-word cap must leave some words out
    assert report["top_tokens"][0]["count"] >= report["top_tokens"][1]["count"]
    assert any("corpus report" in line for line in lines)
    # each document is followed by EOS in its shard
    train = data.tokens("train")
    assert all(train[end - 1] == data.tokenizer.eos_id for end in data.doc_starts("train")[1:])
    again = prepare(config, tmp_path / "data", log=lines.append)
    assert lines[-1].startswith("using prepared data") and again.meta == data.meta


def test_other_settings_are_refused_without_overwrite(tmp_path, corpus_dir):
    prepare(DataConfig(source=str(corpus_dir), tokenizer="char"), tmp_path / "data", log=lambda _: None)
    before = (tmp_path / "data" / "train.bin").read_bytes()
    other = DataConfig(source=str(corpus_dir), tokenizer="char", lowercase=True)
    with pytest.raises(ArlmError, match="other settings"):
        prepare(other, tmp_path / "data", log=lambda _: None)
    assert (tmp_path / "data" / "train.bin").read_bytes() == before
    prepare(other, tmp_path / "data", overwrite=True, log=lambda _: None)
    assert load_prepared(tmp_path / "data").meta["data"]["lowercase"] is True


def test_data_a_run_trains_on_is_not_replaced(tmp_path, corpus_dir, monkeypatch):
    """--overwrite does not replace prepared data while a run holds them (arlm train does, for as long as it
    trains): refused with one line, the data and no temporary left; once it is released, replaced. Also when the
    run starts while the new data is being prepared."""
    from arlm.temporaries import holding

    data = tmp_path / "data"
    prepare(DataConfig(source=str(corpus_dir), tokenizer="char"), data, log=lambda _: None)
    before, entries = (data / "train.bin").read_bytes(), sorted(tmp_path.iterdir())
    other = DataConfig(source=str(corpus_dir), tokenizer="char", lowercase=True)
    with holding(data), pytest.raises(ArlmError, match="the data an arlm train is training on now"):
        prepare(other, data, overwrite=True, log=lambda _: None, flag="--out")
    assert (data / "train.bin").read_bytes() == before and sorted(tmp_path.iterdir()) == entries
    import arlm.data.prepare as module

    written = module._prepare_into

    def a_run_starts_meanwhile(*args):
        stack.enter_context(holding(data))
        return written(*args)

    with contextlib.ExitStack() as stack, pytest.raises(ArlmError, match="training on now"):
        monkeypatch.setattr(module, "_prepare_into", a_run_starts_meanwhile)
        prepare(other, data, overwrite=True, log=lambda _: None)
    assert (data / "train.bin").read_bytes() == before and sorted(tmp_path.iterdir()) == entries
    monkeypatch.undo()
    prepare(other, data, overwrite=True, log=lambda _: None)
    assert load_prepared(data).meta["data"]["lowercase"] is True


def test_a_source_changed_since_it_was_prepared_is_refused_without_overwrite(tmp_path, corpus_dir):
    config = DataConfig(source=str(corpus_dir), tokenizer="char")
    fingerprint, lines = data_fingerprint(config), []
    prepare(config, tmp_path / "data", log=lines.append)
    before = (tmp_path / "data" / "train.bin").read_bytes()
    first = sorted(corpus_dir.iterdir())[0]
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same size, newer
    with pytest.raises(ArlmError, match=rf"earlier version of the source \({first.resolve()} changed since\)"):
        prepare(config, tmp_path / "data", log=lines.append)
    with open(first, "a", encoding="utf-8") as f:
        f.write("more text appended to the first document.\n" * 20)
    with pytest.raises(ArlmError, match="pass --overwrite"):
        prepare(config, tmp_path / "data", log=lines.append)
    assert (tmp_path / "data" / "train.bin").read_bytes() == before
    kept = prepare(config, tmp_path / "data", log=lines.append, keep=True)  # a resumed run keeps its data
    assert lines[-2].startswith(f"note: {first.resolve()} changed since") and kept.meta["sources"]
    assert (tmp_path / "data" / "train.bin").read_bytes() == before
    again = prepare(config, tmp_path / "data", overwrite=True, log=lines.append)
    assert again.meta["splits"] != kept.meta["splits"] and data_fingerprint(config) == fingerprint
    assert prepare(config, tmp_path / "data", log=lines.append).meta == again.meta
    assert lines[-1].startswith("using prepared data")


def test_a_tokenizer_given_by_path_and_changed_since_is_noticed(tmp_path, corpus_dir):
    """A tokenizer folder replaced in place: its ids are compared with the data's, not its name."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus_dir.iterdir())]
    train_tokenizer("bpe", texts[:20], 300).save(tmp_path / "tok")
    config = DataConfig(source=str(corpus_dir), tokenizer=str(tmp_path / "tok"))
    first = prepare(config, tmp_path / "data", log=lambda _: None)
    lines = []
    assert prepare(config, tmp_path / "data", log=lines.append).meta == first.meta and "using prepared" in lines[-1]
    train_tokenizer("bpe", texts[20:], 400).save(tmp_path / "tok")  # another tokenizer, the same path
    with pytest.raises(ArlmError, match=rf"\(the tokenizer {tmp_path / 'tok'} changed since\); pass --overwrite"):
        prepare(config, tmp_path / "data", log=lambda _: None)
    kept = prepare(config, tmp_path / "data", keep=True, log=lines.append)  # a resumed run: its own data
    assert kept.meta == first.meta and lines[-2].startswith(f"note: the tokenizer {tmp_path / 'tok'} changed since")
    again = prepare(config, tmp_path / "data", overwrite=True, log=lambda _: None)
    assert (
        again.tokenizer.fingerprint()
        == load_tokenizer(tmp_path / "tok").fingerprint()
        != kept.meta["tokenizer_fingerprint"]
    )


def test_overwrite_replaces_prepared_data_only(tmp_path, corpus_dir):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious", encoding="utf-8")
    (mine / "meta.json").write_text('{"someone": "else"}', encoding="utf-8")
    config = DataConfig(source=str(corpus_dir), tokenizer="char")
    for overwrite in (False, True):
        with pytest.raises(ArlmError, match="holds files but no prepared data.*choose another --out$"):
            prepare(config, mine, overwrite=overwrite, log=lambda _: None, flag="--out")
    assert sorted(p.name for p in mine.iterdir()) == ["meta.json", "notes.txt"]
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "precious"


def test_overwrite_refuses_prepared_data_holding_other_files_and_data_inside_data(tmp_path, corpus_dir):
    """--overwrite deletes only what prepare writes: prepared data that also holds a user's files (or other
    prepared data, which --out inside it would make) is refused whole, the files kept."""
    config, data = DataConfig(source=str(corpus_dir), tokenizer="char"), tmp_path / "data"
    prepare(config, data, log=lambda _: None)
    with pytest.raises(ArlmError, match=rf"^{data}/sub is inside prepared data \({data}\); choose a --out outside"):
        prepare(config, data / "sub", log=lambda _: None, flag="--out")
    (data / "notes.txt").write_text("precious", encoding="utf-8")
    (data / "mine").mkdir()
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    other = DataConfig(source=str(corpus_dir), tokenizer="char", lowercase=True)
    with pytest.raises(
        ArlmError, match=r"holds prepared data and other files \(mine, notes.txt\); --overwrite replaces"
    ):
        prepare(other, data, overwrite=True, log=lambda _: None, flag="--out")
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before and (data / "mine").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data"]  # (no temporary left)
    (data / "notes.txt").unlink()
    (data / "mine").rmdir()
    assert prepare(other, data, overwrite=True, log=lambda _: None).meta["data"]["lowercase"] is True


def test_a_glob_over_the_output_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "w")
    with pytest.raises(ArlmError, match=r"^data.source 'w/\*\*' matches files inside --out w/data "):
        prepare(DataConfig(source="w/**", tokenizer="char"), "w/data", log=lambda _: None, flag="--out")
    assert not [p for p in (tmp_path / "w").iterdir() if p.name.startswith("data")]
    prepare(DataConfig(source="w/*.txt", tokenizer="char"), "w/data", log=lambda _: None, flag="--out")


def test_the_current_folder_is_refused_cleanly(tmp_path, corpus_dir, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    config = DataConfig(source=str(corpus_dir), tokenizer="char")
    for name in (".", "./", "..", "/"):
        with pytest.raises(ArlmError, match="is or holds the current folder; choose another --data.prepared_dir"):
            prepare(config, name, overwrite=True, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "here"] and not any((tmp_path / "here").iterdir())


def test_split_shorter_than_a_block_is_refused(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("just a few characters of text, not many at all." * 3, encoding="utf-8")
    data = prepare(DataConfig(source=str(small), tokenizer="char"), tmp_path / "data", log=lambda _: None)
    with pytest.raises(ArlmError, match=r"val split holds \d+ tokens, shorter than one block"):
        data.sampler("val", DataConfig(), block_size=64, seed=0)


def _reference_documents(config: DataConfig) -> list[Document]:
    """Every document read whole (files, or JSONL records), cut by the in-memory separator/size rule."""
    source = Path(config.source)
    paths = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    docs = []
    for path in paths:
        if path.suffix == ".jsonl":
            lines = path.read_bytes().decode("utf-8").splitlines()
            texts = [json.loads(line)[config.text_field] for line in lines if line.strip()]
        else:
            pattern = BLANK_LINES if config.doc_separator == "blank" else config.doc_separator
            texts = _split_reference(path.read_bytes().decode("utf-8"), pattern, config.doc_max_chars)
        docs += [Document(str(path), t) for t in texts if t]
    return docs


def _reference_prepare(config: DataConfig, out: Path) -> dict:
    """The in-memory path: documents normalized, split, used to train the tokenizer and encoded whole."""
    docs = [Document(d.name, normalize_text(d.text, config)) for d in _reference_documents(config)]
    splits = split_documents([d for d in docs if d.text], config.val_fraction, config.test_fraction, config.seed)
    tokenizer = train_tokenizer(config.tokenizer, [d.text for d in splits.train], config.vocab_size)
    out.mkdir()
    counts = {}
    for name, split_docs in splits.items():
        ids = [[*tokenizer.encode(d.text), tokenizer.eos_id] for d in split_docs]
        write_shard(out / f"{name}.bin", [i for doc in ids for i in doc], tokenizer.vocab_size)
        starts = np.cumsum([0] + [len(doc) for doc in ids])
        np.save(out / f"{name}.docs.npy", starts.astype(np.int64), allow_pickle=False)
        counts[name] = {
            "documents": len(split_docs),
            "characters": sum(len(d.text) for d in split_docs),
            "bytes": sum(len(d.text.encode("utf-8")) for d in split_docs),
            "tokens": int(starts[-1]),
        }
    return {"tokenizer": tokenizer.fingerprint(), "counts": counts, "mode": splits.mode}


def _stream_corpora(tmp_path: Path) -> dict[str, DataConfig]:
    folder = write_corpus(tmp_path / "folder", 30)
    (folder / "dup.txt").write_text((folder / "doc03.txt").read_text(encoding="utf-8"), encoding="utf-8")
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(tiny_text(30, start=30)) + _tricky_text(2000, 0), encoding="utf-8")
    records = tmp_path / "records.jsonl"
    texts = tiny_text(25, start=5)
    records.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts + texts[:3]), encoding="utf-8")
    return {
        "folder-bpe": DataConfig(source=str(folder), vocab_size=300, val_fraction=0.1, test_fraction=0.1),
        "book-char-normalized": DataConfig(
            source=str(book), tokenizer="char", unicode="NFKC", lowercase=True, collapse_whitespace=True
        ),
        "book-bpe-strip": DataConfig(source=str(book), vocab_size=400, strip_control=True, test_fraction=0.05),
        "book-blank-lines-word": DataConfig(
            source=str(book), tokenizer="word", vocab_size=500, doc_separator="blank", doc_max_chars=700
        ),
        "book-regex-bpe": DataConfig(source=str(book), vocab_size=300, doc_separator=r"\n(?=[A-Z])"),
        "jsonl-bpe": DataConfig(source=str(records), text_field="body", vocab_size=300, test_fraction=0.1),
    }


@pytest.mark.parametrize(
    "case",
    ["folder-bpe", "book-char-normalized", "book-bpe-strip", "book-blank-lines-word", "book-regex-bpe", "jsonl-bpe"],
)
def test_streaming_shards_equal_the_in_memory_path(tmp_path, monkeypatch, case):
    """Tiny blocks, pieces and batches, so that every document is read, normalized, stored, split and
    encoded in many parts: the shards must be byte-identical to encoding each document whole."""
    config = _stream_corpora(tmp_path)[case]
    for name, value in [
        ("arlm.data.corpus.READ_BYTES", 97),
        ("arlm.data.corpus.PIECE_CHARS", 300),
        ("arlm.data.textstore.READ_BYTES", 61),
        ("arlm.data.pieces.LOOKAHEAD", 40),
        ("arlm.data.prepare.PIECE_CHARS", 250),
        ("arlm.data.prepare.BATCH_CHARS", 700),
    ]:
        monkeypatch.setattr(name, value)
    data = prepare(config, tmp_path / "stream", log=lambda _: None)
    reference = _reference_prepare(config, tmp_path / "reference")
    assert data.tokenizer.fingerprint() == reference["tokenizer"]
    assert data.meta["split_mode"] == reference["mode"]
    for split in ("train", "val", "test"):
        for suffix in (".bin", ".docs.npy"):
            stream = (tmp_path / "stream" / f"{split}{suffix}").read_bytes()
            assert stream == (tmp_path / "reference" / f"{split}{suffix}").read_bytes(), (split, suffix)
        assert data.meta["splits"][split] == reference["counts"][split]
    report = json.loads((tmp_path / "stream" / "report.json").read_text())
    train = read_shard(tmp_path / "reference" / "train.bin")
    top = np.bincount(train, minlength=data.tokenizer.vocab_size)
    assert [t["count"] for t in report["top_tokens"]] == sorted(top, reverse=True)[: len(report["top_tokens"])]


def test_a_split_too_small_is_refused_and_nothing_is_written(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("x", encoding="utf-8")
    with pytest.raises(ArlmError, match="the train split holds 0 tokens"):
        prepare(DataConfig(source=str(one), tokenizer="char"), tmp_path / "data", log=lambda _: None)
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\t  \n   \n", encoding="utf-8")
    with pytest.raises(ArlmError, match=r"the train split holds \d tokens, shorter than one block \(17 with"):
        prepare(DataConfig(source=str(blank)), tmp_path / "data", log=lambda _: None, block_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "one.txt"]


def test_padded_mode_refuses_an_empty_split_only():
    check_split_size("train", 2, 128, "padded")
    with pytest.raises(ArlmError, match="the val split holds no tokens"):
        check_split_size("val", 0, 128, "padded")
    with pytest.raises(ArlmError, match="shorter than one block"):
        check_split_size("val", 2, 128, "packed")


def test_out_naming_a_file_is_refused(tmp_path, corpus_dir):
    target = tmp_path / "notes.txt"
    target.write_text("keep me", encoding="utf-8")
    with pytest.raises(ArlmError, match="is a file, not a folder"):
        prepare(DataConfig(source=str(corpus_dir), tokenizer="char"), target, log=lambda _: None)
    with pytest.raises(ArlmError, match="cannot create"):
        prepare(DataConfig(source=str(corpus_dir), tokenizer="char"), target / "data", log=lambda _: None)
    assert target.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "notes.txt"]


def test_separator_settings_enter_the_fingerprint_only_when_set():
    plain = DataConfig(source="builtin")
    assert "doc_separator" not in prepare_settings(plain)  # data prepared before the option still matches
    blank = DataConfig(source="builtin", doc_separator="blank")
    assert prepare_settings(blank)["doc_separator"] == "blank"
    assert data_fingerprint(blank) != data_fingerprint(plain)
    assert data_fingerprint(DataConfig(source="builtin", doc_max_chars=100)) != data_fingerprint(plain)


def _peak_rss_of_prepare(corpus: Path, out: Path) -> int:
    """Peak resident memory (bytes) of `arlm prepare` on a corpus, in a subprocess."""
    cmd = [sys.executable, "-m", "arlm", "prepare", "--out", str(out), "--data.source", str(corpus)]
    cmd += ["--data.tokenizer", "char", "--data.doc_separator", "blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read().decode()
    return usage.ru_maxrss * 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """8x the text (3 MB -> 24 MB, one file cut into ~20k documents by blank lines) costs under 64 MiB more
    peak memory; reading whole files took about 140x the corpus."""
    paragraphs = [p for t in tiny_text(79) for p in t.split("\n\n") if p.strip()]
    rng = random.Random(0)
    peaks = []
    for size in (3_000_000, 24_000_000):
        corpus = tmp_path / f"corpus-{size}.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            written = 0
            while written < size:
                text = "\n\n".join(f"{rng.choice(paragraphs)} {rng.randrange(10**6)}" for _ in range(1000)) + "\n\n"
                written += f.write(text)
        peaks.append(_peak_rss_of_prepare(corpus, tmp_path / f"data-{size}"))
    assert peaks[1] - peaks[0] < 64 * 2**20, [p / 2**20 for p in peaks]


def test_a_tokenizer_that_marks_the_start_of_each_input_gets_documents_whole(tmp_path, monkeypatch):
    """SentencePiece's Metaspace prefixes every input with '▁': a long document cut in pieces would get one
    per piece, so such a tokenizer encodes each document whole."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers

    book = tmp_path / "book.txt"
    book.write_text("\n".join(tiny_text(10)), encoding="utf-8")
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(tiny_text(10), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", EOS]))
    (tmp_path / "sp").mkdir()
    backend.save(str(tmp_path / "sp" / "tokenizer.json"))
    sentencepiece = load_tokenizer(tmp_path / "sp")
    assert not sentencepiece.encodes_pieces_exactly()
    assert HFTokenizer.train_bpe(tiny_text(3), 300).encodes_pieces_exactly()
    monkeypatch.setattr("arlm.data.prepare.PIECE_CHARS", 200)
    config = DataConfig(source=str(book), tokenizer=str(tmp_path / "sp"), val_fraction=0.0)
    data = prepare(config, tmp_path / "data", log=lambda _: None)
    expected = sentencepiece.encode(book.read_text(encoding="utf-8")) + [sentencepiece.eos_id]
    assert data.tokens("train").tolist() == expected


def test_load_prepared_says_whether_the_folder_is_missing_or_not_prepared(tmp_path):
    with pytest.raises(ArlmError, match="does not exist .*run arlm prepare first"):
        load_prepared(tmp_path / "missing")
    with pytest.raises(ArlmError, match=r"is not a prepared corpus \(no meta.json\)"):
        load_prepared(tmp_path)


def test_a_failed_prepare_leaves_no_folders_behind(tmp_path):
    with pytest.raises(ArlmError, match="does not exist"):
        prepare(DataConfig(source=str(tmp_path / "missing.txt")), tmp_path / "runs" / "a" / "data", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_a_special_tokens_text_in_the_corpus_is_data(tmp_path, tokenizer):
    """`<|endoftext|>` typed in a text is text (as nanoGPT's encode_ordinary reads it): no false document end,
    no padding id in the shards, and the shards decode to the text."""
    docs = tiny_text(6)
    text = "".join(docs[:3]) + "\nThe token <|endoftext|> and <|pad|> appear in this text.\n" + "".join(docs[3:])

    def shards(text: str, name: str):
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
        source = str(tmp_path / f"{name}.txt")
        config = DataConfig(source=source, tokenizer=tokenizer, vocab_size=300, split="contiguous")
        data = prepare(config, tmp_path / name, log=lambda _: None)
        return data.tokenizer, [data.tokens(split) for split in ("train", "val", "test")]

    _, plain = shards(text.replace("<|", "<!"), "plain")  # the same text without a special token's
    tok, ids = shards(text, "special")
    count = lambda parts, i: sum(int((part == i).sum()) for part in parts)
    assert count(ids, tok.eos_id) == count(plain, tok.eos_id) and count(ids, tok.pad_id) == 0
    assert "".join(tok.decode(part) for part in ids) == text


def test_the_report_says_how_the_text_was_split(tmp_path, corpus_dir):
    one = tmp_path / "one.txt"
    one.write_text("".join(tiny_text(4)), encoding="utf-8")
    prepare(DataConfig(source=str(one), tokenizer="char"), tmp_path / "a", log=lambda _: None)
    report = (tmp_path / "a" / "report.txt").read_text(encoding="utf-8")
    assert "split by contiguous fractions of the text (duplicate documents are not looked for)" in report
    prepare(DataConfig(source=str(corpus_dir), tokenizer="char"), tmp_path / "b", log=lambda _: None)
    assert "split by documents; exact duplicate documents dropped: 0" in (tmp_path / "b" / "report.txt").read_text()
