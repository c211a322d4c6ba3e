import pytest

from arlm.commands.plot import plot_command
from arlm.errors import ArlmError


def test_a_figure_path_that_cannot_be_written_is_refused(tmp_path):
    with pytest.raises(ArlmError, match="suffix matplotlib writes"):
        plot_command(["no-such-run"], str(tmp_path / "p.txt"), log=lambda _: None)


def test_a_run_without_gradient_norms_is_refused_before_any_figure_is_written(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 8, "train_nll": 3.0}\n', encoding="utf-8")
    out = tmp_path / "pg.png"
    with pytest.raises(ArlmError, match="logged no gradient norms"):
        plot_command([str(run)], str(out), grad_norms=True, log=lambda _: None)
    assert not out.exists()
