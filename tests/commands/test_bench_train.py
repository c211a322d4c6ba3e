import pytest

from arlm.commands.bench_train import bench_train_command


@pytest.mark.hf
def test_bench_train_runs_both_sides_and_reports_a_ratio():
    lines = []
    out = bench_train_command(
        [
            "--model.n_layer",
            "1",
            "--model.d_model",
            "32",
            "--model.n_head",
            "2",
            "--model.block_size",
            "16",
            "--model.vocab_size",
            "50",
        ],
        batch=2,
        repeats=2,
        steps=2,
        log=lines.append,
    )
    assert set(out["rates"]) == {"arlm", "transformers"} and out["ratio"] > 0
    assert any("ratio arlm / transformers" in line for line in lines)
    assert all(len(t) == 2 for t in out["times"].values())
