import json
import shutil

import numpy as np
import pytest

from arlm.commands.eval_context import context_command
from arlm.commands.train import train_command
from arlm.errors import ArlmError
from tests.helpers import tiny_config


@pytest.mark.slow
def test_trained_model_gains_from_context(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 60, "lr": 1e-2})
    train_command(config, log=lambda _: None)
    curves = context_command([str(tmp_path / "run")], out=str(tmp_path / "ctx.png"), log=lambda _: None)
    curve = curves["run"]
    assert len(curve) == 32 and curve[0] > np.mean(curve[8:])  # the first token has no context to use
    assert (tmp_path / "ctx.png").exists()


def test_negative_batches_refused_before_any_run_is_read(tmp_path):
    with pytest.raises(ArlmError, match="--batches -1"):
        context_command(["no-such-run"], batches=-1, out=str(tmp_path / "ctx.png"), log=lambda _: None)


def test_a_figure_path_that_cannot_be_written_is_refused_before_any_run_is_read(tmp_path):
    with pytest.raises(ArlmError, match="suffix matplotlib writes"):
        context_command(["no-such-run"], out=str(tmp_path / "ctx.json"), log=lambda _: None)


@pytest.mark.slow
def test_runs_with_the_same_folder_name_keep_their_own_curves(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 2})
    train_command(config, log=lambda _: None)
    shutil.copytree(tmp_path / "run", tmp_path / "other" / "run")
    runs = [str(tmp_path / "run"), str(tmp_path / "other" / "run")]
    curves = context_command(runs, batches=1, out=str(tmp_path / "c.png"), log=lambda _: None)
    assert list(curves) == ["run", "run-2"]
    saved = json.loads((tmp_path / "c.json").read_text())
    assert list(saved["loss_by_position"]) == ["run", "run-2"] and saved["split"] == "val"
    assert {m["dtype"] for m in saved["measured"].values()} == {"float32"}
    assert saved["measured"]["run-2"]["ref"] == runs[1] and saved["measured"]["run"]["device"] == "cpu"


def test_a_run_without_data_of_its_own_takes_data(tmp_path, corpus_dir):
    """A checkpoint moved away from its run's data: refused naming --data, which eval context now takes."""
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 2})
    train_command(config, log=lambda _: None)
    checkpoint = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    alone = tmp_path / "alone"
    shutil.copytree(checkpoint, alone)
    shutil.move(tmp_path / "run" / "data", tmp_path / "data")
    with pytest.raises(ArlmError, match="found no prepared data .*; give --data DIR$"):
        context_command([str(alone)], batches=1, out=str(tmp_path / "c.png"), log=lambda _: None)
    curves = context_command(
        [str(alone)], data_dir=str(tmp_path / "data"), batches=1, out=str(tmp_path / "c.png"), log=lambda _: None
    )
    assert len(curves["alone"]) == 32
