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


def test_runs_with_the_same_folder_name_keep_their_own_curves(tmp_path):
    record = '{"step": 1, "tokens": 8, "train_nll": 3.0, "gradnorm/L0/wq": 0.5}\n'
    for parent in ("runs", "other"):
        (tmp_path / parent / "a").mkdir(parents=True)
        (tmp_path / parent / "a" / "metrics.jsonl").write_text(record, encoding="utf-8")
    out = tmp_path / "p.png"
    runs = [str(tmp_path / "runs" / "a"), str(tmp_path / "other" / "a")]
    written = plot_command(runs, str(out), grad_norms=True, log=lambda _: None)
    assert [p.name for p in written] == ["p.png", "p-gradnorms-a.png", "p-gradnorms-a-2.png"]


@pytest.mark.parametrize("logged", ["", '{"event": "resume", "step": 0}\n'])
def test_a_run_that_logged_no_loss_is_refused(tmp_path, logged):
    """A metrics.jsonl without a loss (a run killed before its first log line) would draw an empty figure."""
    (tmp_path / "metrics.jsonl").write_text(logged, encoding="utf-8")
    out = tmp_path / "p.png"
    with pytest.raises(ArlmError, match=r"metrics\.jsonl holds no loss yet .*; nothing to plot"):
        plot_command([str(tmp_path)], str(out), log=lambda _: None)
    assert not out.exists()
