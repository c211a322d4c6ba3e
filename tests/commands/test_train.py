"""`arlm train`: what it prepares and reports, and overrides the run would not read refused before any work."""

import json

import numpy as np
import pytest

from arlm.cli import main
from tests.helpers import chat_raw, tiny_base, tiny_raw, write_corpus, write_yaml


def test_train_reports_chat_conversations_cut_to_the_context_as_prepare_does(tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    pairs = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)] + [{"prompt": "x", "completion": "y" * 80}]
    chat.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    raw = chat_raw(tmp_path, tiny_base(tmp_path / "base"), chat, data={"val_fraction": 0.0}, train={"max_steps": 1})
    assert main(["train", "--preset", str(write_yaml(tmp_path / "sft.yaml", raw))]) == 0
    out = capsys.readouterr().out
    train = json.loads((tmp_path / "run" / "data" / "report.json").read_text())["splits"]["train"]
    flags = int(np.load(tmp_path / "run" / "data" / "train.targets.npy").sum())  # every answer token, cut or not
    assert train["truncated"] == 1 and 0 < train["cut_targets"] < 80 + 1  # the long answer's tail, and its EOS
    assert train["target_tokens"] + train["cut_targets"] == flags  # the loss sees the tokens within the context
    cut = f"1 cut to the context (answers shortened by {train['cut_targets']} tokens)"
    assert f"train: 7 conversations, {train['target_tokens']} target tokens, {cut}" in out
    assert "note: 1 training conversations cut to a row of 65 tokens (model.block_size 64, and the token it" in out
    assert f"predicts): {train['cut_targets']} answer tokens past it are never trained on" in out


def test_train_says_what_padded_mode_cuts_off(tmp_path, capsys):
    """data.mode padded puts each document in one row: a long document's tail is never trained on, and the
    training log says how much (a one-document corpus trained on its first block alone, without a word)."""
    corpus = tmp_path / "one.txt"
    corpus.write_text("a long document of many characters. " * 40)  # 1,440 characters, one document
    raw = tiny_raw(tmp_path, corpus, data={"mode": "padded", "val_fraction": 0.0, "test_fraction": 0.0})
    raw["train"]["max_steps"] = 1
    assert main(["train", "--preset", str(write_yaml(tmp_path / "padded.yaml", raw))]) == 0
    out = capsys.readouterr().out
    tokens = 1440 + 1  # one id a character, and the document's EOS
    assert (
        f"note: data.mode padded puts one document in a row of 33 tokens: 1 of 1 training documents are longer, "
        f"and their {tokens - 32:,} tokens past the row ({(tokens - 32) / tokens:.1%} of the split) are never trained"
    ) in out


def test_resume_keeps_the_data_it_trained_on_when_the_source_changed(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    raw = tiny_raw(tmp_path, corpus, train={"max_steps": 2, "checkpoint_interval": 2, "eval_interval": 2})
    preset = write_yaml(tmp_path / "tiny.yaml", raw)
    assert main(["train", "--preset", str(preset)]) == 0
    before = (tmp_path / "run" / "data" / "train.bin").read_bytes()
    with open(sorted(corpus.iterdir())[0], "a", encoding="utf-8") as f:
        f.write("text added after the run started.\n" * 20)
    capsys.readouterr()
    run = str(tmp_path / "run")
    assert main(["train", "--resume", "latest", "--train.out_dir", run, "--train.max_steps", "4"]) == 0
    assert "changed since" in capsys.readouterr().out
    assert (tmp_path / "run" / "data" / "train.bin").read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--preset", "smollm2-sft", "--model.n_layer", "2"], "--model.n_layer does nothing with train.init"),
        (["--preset", "smollm2-sft", "--model.flavour", "gpt2"], "--model.flavour does nothing with train.init"),
        (
            ["--preset", "smollm2-sft", "--train.lora.rank", "0", "--train.lora.alpha", "64"],
            "--train.lora.alpha does nothing at train.lora.rank 0",
        ),
        (["--train.lora.dropout", "0.1"], "--train.lora.dropout does nothing at train.lora.rank 0"),
        (["--preset", "smollm2-sft", "--data.sampling", "epoch"], "--data.sampling does nothing with chat data"),
        (
            ["--preset", "smollm2-sft", "--data.document_mask", "false"],
            "--data.document_mask does nothing with chat data",
        ),
        (
            ["--data.mode", "padded", "--data.document_mask", "true"],
            "--data.document_mask does nothing with data.mode padded (a row holds one document)",
        ),
        (["--data.pad_to", "block"], "--data.pad_to does nothing with data.mode packed (a row is a whole block)"),
        (["--train.distill_alpha", "0.5"], "--train.distill_alpha does nothing without train.distill_from"),
        (["--train.distill_temperature", "2"], "--train.distill_temperature does nothing without train.distill_from"),
    ],
)
def test_an_override_the_run_would_not_read_is_refused(tmp_path, capsys, overrides, message):
    assert main(["train", *overrides, "--train.out_dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_overwrite_never_replaces_a_folder_of_other_files_as_data(tmp_path, corpus_dir, capsys):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    argv = ["train", "--preset", str(preset), "--data.prepared_dir", str(mine), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds files but no prepared data" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "precious"


def test_the_final_table_keeps_its_columns_apart_for_any_perplexity():
    """An early run's perplexity (2.4e10 at loss 23.9) ran into the loss: '23.914524318682691.42'."""
    from types import SimpleNamespace

    from arlm.commands.train import final_report
    from arlm.evaluation.perplexity import EvalResult

    results = {"train": EvalResult(23.9145, 128, 300), "val": EvalResult(1.5, 1_234_567, 4_000_000)}
    trainer = SimpleNamespace(tc=SimpleNamespace(final_eval_batches=1), eval_samplers=dict.fromkeys(results))
    trainer.evaluate = lambda split, batches, progress: results[split]
    lines = []
    final_report(trainer, lines.append)
    rows = [line.split() for line in lines]
    assert rows[0] == ["split", "loss", "ppl", "bits/byte", "tokens"] and all(len(row) == 5 for row in rows)
    assert rows[1][:3] == ["train", "23.9145", "2.43e+10"] and rows[2][:3] == ["val", "1.5000", "4.48"]
    assert rows[2][4] == "1,234,567"


def test_a_run_inside_another_runs_prepared_data_is_refused(tmp_path, capsys):
    """--train.out_dir runs/quickstart/data put a run's files into that run's prepared data: refused, nothing
    written there."""
    corpus = write_corpus(tmp_path / "corpus")
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus, train={"max_steps": 1}))
    assert main(["train", "--preset", str(preset)]) == 0
    data = tmp_path / "run" / "data"
    before = sorted(p.name for p in data.iterdir())
    for inside in (data, data / "deeper"):
        capsys.readouterr()
        assert main(["train", "--preset", str(preset), "--train.out_dir", str(inside)]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err
            == f"error: --train.out_dir {inside} is inside prepared data ({data}); choose a --train.out_dir outside it"
        )
    assert sorted(p.name for p in data.iterdir()) == before


def test_refusals_come_before_the_process_group(tmp_path, monkeypatch):
    """A checkpoint that cannot be opened, or an out_dir inside prepared data, is refused before the process group
    is joined: under torchrun a refusal after it would skip leaving the group, which only train's try does."""
    from arlm.commands.train import train_command
    from arlm.config import config_from_dict
    from arlm.errors import ArlmError
    from arlm.training import distributed

    joined = []
    monkeypatch.setattr(distributed, "init_distributed", lambda device_type: joined.append(device_type))
    corpus = write_corpus(tmp_path / "corpus")
    config = config_from_dict(tiny_raw(tmp_path, corpus, train={"max_steps": 1}))
    with pytest.raises(ArlmError, match="checkpoint"):
        train_command(config, resume=tmp_path / "no-such-run")
    assert joined == []


def test_a_run_holds_its_data_while_it_trains(tmp_path, monkeypatch):
    """arlm train holds its prepared data for as long as it trains, so that a prepare --overwrite there is refused
    (tests/data/test_prepare.py) instead of swapping the data under it."""
    from arlm.commands import train as command
    from arlm.temporaries import in_use

    held = []
    train_on = command._Job._train_on
    monkeypatch.setattr(
        command._Job,
        "_train_on",
        lambda self, data, *a: held.append(in_use(data.directory)) or train_on(self, data, *a),
    )
    corpus = write_corpus(tmp_path / "corpus")
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus, train={"max_steps": 1}))
    assert main(["train", "--preset", str(preset)]) == 0
    assert held == [True] and not in_use(tmp_path / "run" / "data")
