import json

import pytest

from arlm.commands.sweep import parse_vary, sweep_command
from arlm.errors import ArlmError
from tests.helpers import tiny_raw, write_yaml


def test_parse_vary():
    assert parse_vary(["model.d_model=16,32"]) == [("model.d_model", ["16", "32"])]
    with pytest.raises(ArlmError, match="section.key=v1,v2"):
        parse_vary(["d_model=16"])


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
