"""`arlm study sft` at toy scale: the before/after table from one command, with its measured costs."""

import json

import pytest

from arlm.cli import main
from arlm.evaluation.icl import TASKS_DIR
from tests.helpers import chat_raw, tiny_base, write_yaml


@pytest.mark.slow
def test_the_study_reports_before_lora_and_full_with_intervals_and_costs(tmp_path, capsys):
    alphabet = "".join(sorted(set("user: assistant\n" + (TASKS_DIR / "plurals.jsonl").read_text())))
    base = tiny_base(tmp_path / "base", block_size=128, alphabet=alphabet)
    raw = chat_raw(tmp_path, base, tmp_path / "unused.jsonl", model={"block_size": 128}, train={"max_steps": 6})
    preset = write_yaml(tmp_path / "sft.yaml", raw)
    out = tmp_path / "study"
    argv = ["study", "sft", "--preset", str(preset), "--out", str(out), "--tasks", "plurals", "--limit", "6"]
    assert main(argv) == 0
    report = json.loads((out / "sft.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["before", "lora", "full"]
    for row in rows.values():
        acc = row["accuracy"]
        assert acc["n"] == 6 and acc["ci"][0] <= acc["accuracy"] <= acc["ci"][1]
        assert acc["correct"] <= acc["contained"] <= acc["n"]  # an exact answer is also contained
    lora, full = rows["lora"], rows["full"]
    assert full["optimizer_bytes"] >= 3 * lora["optimizer_bytes"] > 0
    assert full["checkpoint_bytes"] > lora["checkpoint_bytes"] > 0
    assert lora["peak_rss_bytes"] > 0 and lora["seconds"] > 0
    table = (out / "sft.md").read_text()
    assert table.count("\n") == 5 and "| lora |" in table and table in capsys.readouterr().out


def test_an_earlier_run_in_the_study_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "study"
    kept = out / "runs" / "full" / "metrics.jsonl"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"step": 1}\n')
    assert main(["study", "sft", "--out", str(out), "--tasks", "plurals", "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds an earlier run" in err and "--overwrite" in err, err
    assert kept.read_text() == '{"step": 1}\n' and not (out / "sft.jsonl").exists()  # nothing lost, nothing written


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--limit", "0"], "--limit must be >= 1 held-out items per task (leave it out for all), got 0"),
        (["--limit", "-5"], "--limit must be >= 1 held-out items per task (leave it out for all), got -5"),
        (["--full-lr", "-1"], "train.lr must be a finite number above 0, got -1.0"),
    ],
)
def test_impossible_settings_are_refused_before_any_work(tmp_path, capsys, args, line):
    from arlm.cli import main

    assert main(["study", "sft", "--out", str(tmp_path / "study"), *args]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {line}"]
    assert list(tmp_path.iterdir()) == []
