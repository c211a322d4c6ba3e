"""`arlm merge` (and the exports) never write over, into or around the LoRA run they read or its base model."""

import json

import pytest

from arlm.cli import main
from arlm.commands.merge import merge_run
from arlm.commands.train import train_command
from arlm.config import config_from_dict
from arlm.errors import ArlmError
from tests.helpers import chat_raw, tiny_base, write_chat


@pytest.fixture(scope="module")
def lora_on_a_run(tmp_path_factory):
    """(base run folder, LoRA run adapting it) after 4 steps; the base run holds one checkpoint."""
    tmp = tmp_path_factory.mktemp("merge")
    base_run = tmp / "base"
    tiny_base(base_run / "checkpoints" / "step-00000000")
    raw = chat_raw(tmp, base_run, write_chat(tmp / "chat.jsonl"), train={"max_steps": 4, "checkpoint_interval": 2})
    train_command(config_from_dict(raw).validate(), log=lambda _: None)
    return base_run, tmp / "run"


def _snapshot(*folders):
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_over_into_or_around_the_run_or_its_base_is_refused(lora_on_a_run, capsys):
    base, run = lora_on_a_run
    before = _snapshot(base, run)
    step = sorted((run / "checkpoints").iterdir())[-1]
    base_step = base / "checkpoints" / "step-00000000"
    refused = [
        ("merge", run, run),
        ("merge", run, step),
        ("merge", step, run),
        ("merge", run, run.parent),
        ("merge", run, base),
        ("merge", run, base_step),
        ("merge", step, base / "merged"),
        ("export hf", run, run),
        ("export hf", run, run / "hf"),
        ("export hf", run, base),
        ("export gguf", run, base / "m.gguf"),
    ]
    for verb, model, out in refused:
        code = main([*verb.split(), str(model), str(out), "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "choose an output outside it" in err, (verb, out, err)
    assert _snapshot(base, run) == before
    assert not (base / "merged").exists() and not (run / "hf").exists() and not (base / "m.gguf").exists()


def test_merge_writes_beside_the_run(lora_on_a_run, tmp_path):
    _, run = lora_on_a_run
    assert main(["merge", str(run), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert main(["merge", str(run), str(tmp_path / "merged"), "--overwrite"]) == 0  # a merged model: replaced


def test_overwrite_replaces_a_checkpoint_never_a_folder_of_other_files(lora_on_a_run, tmp_path, capsys):
    _, run = lora_on_a_run
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for flags in ([], ["--overwrite"]):  # (--overwrite is never suggested where it would be refused)
        assert main(["merge", str(run), str(mine), *flags]) == 2
        assert "holds no arlm checkpoint (--overwrite replaces only a checkpoint)" in capsys.readouterr().err
    (tmp_path / "file").write_text("mine")
    assert main(["merge", str(run), str(tmp_path / "file")]) == 2
    assert "file is a file (--overwrite replaces only a checkpoint)" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    merged = tmp_path / "merged"
    assert main(["merge", str(run), str(merged)]) == 0
    (merged / "notes.txt").write_text("the user's, beside the merged checkpoint")
    assert main(["merge", str(run), str(merged), "--overwrite"]) == 2
    assert "holds files that are not its checkpoint's (notes.txt); --overwrite would delete" in capsys.readouterr().err
    assert (merged / "notes.txt").exists()


def test_a_folder_that_is_no_arlm_run_is_called_no_lora_run(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ArlmError, match="hf is not a LoRA run"):
        merge_run(hf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_merged_model_keeps_the_fingerprint_of_the_data_it_was_trained_on(lora_on_a_run, tmp_path):
    """The merged checkpoint dropped it, so evaluating it scored whatever had been prepared in its data folder since
    (another run's conversations) without a word, where the LoRA run itself was refused."""
    from arlm.interop.loading import load_model

    _, run = lora_on_a_run
    assert main(["merge", str(run), str(tmp_path / "merged")]) == 0
    ours, theirs = load_model(str(tmp_path / "merged")), load_model(str(run))
    assert theirs.data_fingerprint and ours.data_fingerprint == theirs.data_fingerprint
