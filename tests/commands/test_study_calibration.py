import json

import pytest

from arlm.commands.study_calibration import calibration_study
from arlm.errors import ArlmError
from tests.helpers import tiny_raw, write_yaml


@pytest.mark.slow
def test_the_study_trains_both_runs_and_writes_its_files(tmp_path, corpus_dir):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    lines = []
    results = calibration_study(tmp_path / "out", preset=str(preset), runs_dir=tmp_path / "runs", log=lines.append)
    assert list(results) == ["label-smoothing-0", "label-smoothing-0.1"]
    for name in ("calibration.png", "calibration.json", "report.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    record = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert record["label_smoothing"] == [0.0, 0.1]
    assert record["max_steps"] == 20
    assert set(record["results"]) == set(results)
    configs = [json.loads((tmp_path / "runs" / name / "config.json").read_text())["train"] for name in results]
    assert [c["label_smoothing"] for c in configs] == [0.0, 0.1]
    assert {k: v for k, v in configs[0].items() if k not in ("label_smoothing", "out_dir")} == {
        k: v for k, v in configs[1].items() if k not in ("label_smoothing", "out_dir")
    }
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 0 |" in report and "| 0.1 |" in report
    assert any("ECE" in line for line in lines)
    before = (tmp_path / "runs" / "label-smoothing-0" / "metrics.jsonl").read_bytes()
    with pytest.raises(ArlmError, match="holds an earlier run; pass --overwrite"):
        calibration_study(tmp_path / "out", preset=str(preset), runs_dir=tmp_path / "runs", log=lines.append)
    assert (tmp_path / "runs" / "label-smoothing-0" / "metrics.jsonl").read_bytes() == before


def test_a_placement_override_is_refused_not_dropped(tmp_path, corpus_dir):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    for key in ("--train.out_dir", "--data.prepared_dir"):
        with pytest.raises(ArlmError, match=f"{key}: the study trains each run in --runs-dir"):
            calibration_study(tmp_path / "out", preset=str(preset), overrides=[key, str(tmp_path / "x")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()
