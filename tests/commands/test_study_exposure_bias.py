import json

import pytest

from arlm.commands.study_exposure_bias import exposure_bias_study
from tests.helpers import tiny_raw, write_yaml


@pytest.mark.slow
def test_the_study_trains_plain_and_scheduled_sampling_and_writes_its_files(tmp_path, corpus_dir):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    lines = []
    results = exposure_bias_study(
        tmp_path / "out", preset=str(preset), runs_dir=tmp_path / "runs", n_sequences=8, log=lines.append
    )
    assert list(results) == ["plain", "scheduled-sampling"]
    for res in results.values():
        assert (res.prompt_len, res.length, res.sequences) == (8, 24, 8)  # a quarter of block 32 as prompt
    for name in ("exposure_bias.png", "exposure_bias.json", "report.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    record = json.loads((tmp_path / "out" / "exposure_bias.json").read_text())
    assert record["scheduled_sampling_warmup"] == 10 and set(record["results"]) == set(results)
    train = {name: json.loads((tmp_path / "runs" / name / "config.json").read_text())["train"] for name in results}
    assert (train["plain"]["scheduled_sampling"], train["scheduled-sampling"]["scheduled_sampling"]) == (0.0, 0.25)
    logged = (tmp_path / "runs" / "scheduled-sampling" / "metrics.jsonl").read_text()
    assert '"scheduled_sampling"' in logged
    assert "| plain |" in (tmp_path / "out" / "report.md").read_text()
    assert any("gap@" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--scheduled-sampling", "1.5"], "train.scheduled_sampling must be a finite number in [0.0, 1.0], got 1.5"),
        (["--sequences", "0"], "--sequences must be >= 1, got 0"),
    ],
)
def test_impossible_settings_are_refused_before_any_run_trains(tmp_path, corpus_dir, capsys, args, line):
    from arlm.cli import main

    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    before = sorted(tmp_path.iterdir())
    assert main(["study", "exposure-bias", "--preset", str(preset), "--out", str(tmp_path / "study"), *args]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {line}"]
    assert sorted(tmp_path.iterdir()) == before
