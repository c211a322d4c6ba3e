import numpy as np

from arlm.commands.eval_context import context_command
from arlm.commands.train import train_command
from tests.helpers import tiny_config


def test_trained_model_gains_from_context(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 60, "lr": 1e-2})
    train_command(config, log=lambda _: None)
    curves = context_command([str(tmp_path / "run")], out=str(tmp_path / "ctx.png"), log=lambda _: None)
    curve = curves["run"]
    assert len(curve) == 32 and curve[0] > np.mean(curve[8:])  # the first token has no context to use
    assert (tmp_path / "ctx.png").exists()
