import json

import pytest

from arlm.config import DataConfig
from arlm.data.prepare import load_prepared, prepare
from arlm.errors import ArlmError


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


def test_split_shorter_than_a_block_is_refused(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("just a few characters of text, not many at all." * 3, encoding="utf-8")
    data = prepare(DataConfig(source=str(small), tokenizer="char"), tmp_path / "data", log=lambda _: None)
    with pytest.raises(ArlmError, match=r"val split holds \d+ tokens, shorter than one block"):
        data.sampler("val", DataConfig(), block_size=64, seed=0)
