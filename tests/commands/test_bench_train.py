import statistics

import pytest

from arlm.bench.train import make_sides
from arlm.commands.bench_train import bench_train_command, model_shape


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
    assert all(len(t) == 2 for t in out["times"].values())
    tokens = 2 * 2 * 16  # steps x batch x context, the same batches on both sides
    for side in ("arlm", "transformers"):
        assert out["rates"][side] == pytest.approx(tokens / statistics.median(out["times"][side]))
    assert out["ratio"] == pytest.approx(out["rates"]["arlm"] / out["rates"]["transformers"])
    assert f"ratio arlm / transformers: {out['ratio']:.2f}x" in "\n".join(lines)


@pytest.mark.hf
def test_both_sides_have_the_same_shape():
    config = model_shape(["--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "2"])
    ours, reference = make_sides(config)
    shapes = [sorted(tuple(sorted(p.shape)) for p in side.model.parameters()) for side in (ours, reference)]
    assert shapes[0] == shapes[1]  # HF's Conv1D keeps (in, out), hence the sorted dimensions


@pytest.mark.parametrize("args", [["--batch", "0"], ["--repeats", "0"], ["--steps", "-1"]])
def test_counts_below_one_are_one_line(capsys, args):
    from arlm.cli import main

    assert main(["bench", "train", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --batch, --repeats and --steps must be >= 1, got ")
