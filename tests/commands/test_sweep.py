import json

import pytest

from arlm.cli import main
from arlm.commands.sweep import _label, parse_vary, sweep_command
from arlm.errors import ArlmError
from tests.helpers import tiny_raw, write_yaml


def test_parse_vary():
    assert parse_vary(["model.d_model=16,32"]) == [("model.d_model", ["16", "32"])]
    with pytest.raises(ArlmError, match="section.key=v1,v2"):
        parse_vary(["d_model=16"])
    with pytest.raises(ArlmError, match="--vary model.d_model is given twice"):  # (the last trained under both labels)
        parse_vary(["model.d_model=16,32", "model.d_model=24"])
    with pytest.raises(ArlmError, match="lists 16 twice"):  # (one run for two)
        parse_vary(["model.d_model=16,16"])
    grid = parse_vary(["data.source=/a/b.txt,c.txt", "train.lora.rank=4"])  # (a folder tree; 'lora=4' for rank)
    assert _label(grid, ("/a/b.txt", "4")) == "source=_a_b.txt-rank=4"


def test_same_tokens_with_a_varied_batch_is_refused(tmp_path, corpus_dir):
    """--same-tokens set each batch from the context: runs labelled batch_size=4 and 8 trained the same batch."""
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"max_steps": 1}))
    with pytest.raises(ArlmError, match="--same-tokens sets each run's train.batch_size"):
        sweep_command(str(preset), ["model.block_size=16,32", "train.batch_size=4,8"], same_tokens=True,
                      out_dir=str(tmp_path / "sw"), log=lambda _: None)  # fmt: skip
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_sweep_trains_each_setting_and_plots_them_together(tmp_path, corpus_dir):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"max_steps": 6}))
    results = sweep_command(
        str(preset), ["model.block_size=16,32"], same_tokens=True, out_dir=str(tmp_path / "sw"), log=lambda _: None
    )
    assert set(results) == {"block_size=16", "block_size=32"}
    configs = {label: json.loads((tmp_path / "sw" / label / "config.json").read_text()) for label in results}
    assert configs["block_size=16"]["train"]["batch_size"] == 2 * configs["block_size=32"]["train"]["batch_size"]
    assert (tmp_path / "sw" / "loss.png").exists() and (tmp_path / "sw" / "final.png").exists()
    assert all(r["final"]["val"]["loss"] > 0 and r["parameters"] > 0 for r in results.values())


def test_a_sweep_over_words_reports_without_the_numeric_figure(tmp_path, corpus_dir):
    """--vary model.flavour=llama,gpt2: every run trained and reported (it raised on float('llama') after training
    them all); the final-loss figure, whose x axis is the value, is drawn for numbers only."""
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"max_steps": 2}))
    out = tmp_path / "sw"
    results = sweep_command(str(preset), ["model.flavour=llama,gpt2"], out_dir=str(out), log=lambda _: None)
    assert set(results) == {"flavour=llama", "flavour=gpt2"}
    assert (out / "sweep.json").exists() and (out / "loss.png").exists() and not (out / "final.png").exists()


def test_out_dir_and_prepared_dir_are_refused(tmp_path, corpus_dir, capsys):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"max_steps": 2}))
    argv = ["sweep", "--preset", str(preset), "--vary", "model.d_model=16", "--out", str(tmp_path / "sw")]
    for extra in (["--train.out_dir", str(tmp_path / "x")], ["--data.prepared_dir", str(tmp_path / "x")]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the sweep places each run in --out" in err
    assert main([*argv[:4], "train.out_dir=a,b", *argv[5:]]) == 2
    assert main([*argv[:4], "data.prepared-dir=a,b", *argv[5:]]) == 2
    assert not (tmp_path / "sw").exists() and not (tmp_path / "x").exists()
    assert main([*argv, "--train.sample_tokens", "3"]) == 0  # the sweep's default of no sample yields to it
    assert json.loads((tmp_path / "sw" / "d_model=16" / "config.json").read_text())["train"]["sample_tokens"] == 3


@pytest.mark.slow
def test_an_earlier_sweep_is_kept_unless_overwrite(tmp_path, corpus_dir):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"max_steps": 2}))
    out = tmp_path / "sw"
    sweep_command(str(preset), ["model.d_model=16,32"], out_dir=str(out), log=lambda _: None)
    weights = (out / "d_model=16" / "checkpoints").rglob("model.safetensors")
    before = {p: p.read_bytes() for p in weights} | {out / "sweep.json": (out / "sweep.json").read_bytes()}
    with pytest.raises(ArlmError, match="holds an earlier sweep; pass --overwrite"):
        sweep_command(str(preset), ["model.d_model=16"], ["--train.lr", "5e-3"], out_dir=str(out), log=lambda _: None)
    assert {p: p.read_bytes() for p in before} == before
    with pytest.raises(ArlmError, match=r"holds runs this sweep does not train again \(d_model=32\)"):
        sweep_command(str(preset), ["model.d_model=16"], out_dir=str(out), overwrite=True, log=lambda _: None)
    assert {p: p.read_bytes() for p in before} == before  # (d_model=32 trained on OUT/data, prepared again after)
    sweep_command(str(preset), ["model.d_model=32,16"], out_dir=str(out), overwrite=True, log=lambda _: None)
    assert set(json.loads((out / "sweep.json").read_text())) == {"d_model=16", "d_model=32"}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(ArlmError, match="holds files but no sweep"):
            sweep_command(str(preset), ["model.d_model=16"], out_dir=str(tmp_path / "mine"), overwrite=overwrite)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_runs_of_other_data_settings_each_get_their_own_data(tmp_path, corpus_dir):
    raw = tiny_raw(tmp_path, corpus_dir, data={"tokenizer": "bpe"}, train={"max_steps": 2})
    preset = write_yaml(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "sw"
    sweep_command(str(preset), ["data.vocab_size=300,400"], out_dir=str(out), log=lambda _: None)
    for label, vocab in (("vocab_size=300", 300), ("vocab_size=400", 400)):
        assert json.loads((out / label / "data" / "meta.json").read_text())["data"]["vocab_size"] == vocab
        assert main(["eval", "perplexity", str(out / label)]) == 0
    assert not (out / "data").exists()


def test_a_stopped_sweep_resumes_keeping_its_finished_runs(tmp_path, corpus_dir, monkeypatch):
    """--resume: a finished run is kept (its figures read from its log), the others train; --overwrite retrained
    them all, the only way on before."""
    import arlm.commands.sweep as sweep

    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train={"max_steps": 2}))
    out, vary = tmp_path / "sw", ["model.d_model=16,32"]
    trained, original = [], sweep.train_command

    def stop_at_the_second(config, **kw):
        if trained:
            raise KeyboardInterrupt
        trained.append(config.train.out_dir)
        return original(config, **kw)

    monkeypatch.setattr(sweep, "train_command", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweep_command(str(preset), vary, out_dir=str(out), log=lambda _: None)
    monkeypatch.setattr(sweep, "train_command", original)
    weights = {p: p.read_bytes() for p in (out / "d_model=16").rglob("model.safetensors")}
    with pytest.raises(ArlmError, match="holds an earlier sweep; pass --overwrite"):
        sweep_command(str(preset), vary, out_dir=str(out), log=lambda _: None)
    with pytest.raises(ArlmError, match="give one of them"):
        sweep_command(str(preset), vary, out_dir=str(out), resume=True, overwrite=True, log=lambda _: None)
    lines = []
    results = sweep_command(str(preset), vary, out_dir=str(out), resume=True, log=lines.append)
    assert any("d_model=16 finished before: kept" in line for line in lines)
    assert {p: p.read_bytes() for p in weights} == weights
    first = json.loads((out / "d_model=16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert results["d_model=16"]["final"]["val"]["loss"] == first["final_val_loss"]
    assert results["d_model=32"]["final"]["val"]["loss"] > 0 and (out / "sweep.json").exists()
    with pytest.raises(ArlmError, match="holds no run of this grid to resume"):
        sweep_command(str(preset), vary, out_dir=str(tmp_path / "none"), resume=True, log=lambda _: None)
