import pytest

from arlm.commands.eval_exposure_bias import exposure_bias_command
from arlm.errors import ArlmError


def test_a_figure_path_that_cannot_be_written_is_refused_before_any_run_is_read(tmp_path):
    with pytest.raises(ArlmError, match="suffix matplotlib writes"):
        exposure_bias_command(["no-such-run"], out=tmp_path / "eb.txt", log=lambda _: None)


@pytest.mark.parametrize("option", ["prompt_len", "length"])
@pytest.mark.parametrize("value", [0, -4])
def test_a_length_below_one_is_refused_not_taken_for_the_default(tmp_path, option, value):
    with pytest.raises(ArlmError, match=f"must be at least 1, got {value}"):
        exposure_bias_command(["no-such-run"], out=tmp_path / "eb.png", log=lambda _: None, **{option: value})


@pytest.mark.slow
def test_runs_of_other_contexts_are_measured_at_one_prompt_and_length(tmp_path, corpus_dir):
    """Each run took its own context's default (the header stated the first's): rows that did not compare."""
    from arlm.commands.train import train_command
    from tests.helpers import tiny_config

    runs = []
    for block in (32, 64):
        out = tmp_path / f"b{block}"
        config = tiny_config(
            tmp_path, corpus_dir, model={"block_size": block}, train={"max_steps": 1, "out_dir": str(out)}
        )
        train_command(config, log=lambda _: None)
        runs.append(str(out))
    lines = []
    results = exposure_bias_command(runs, n_sequences=2, out=tmp_path / "eb.png", log=lines.append)
    assert {(r.prompt_len, r.length) for r in results.values()} == {(8, 24)}  # a quarter of 32, the rest
    assert "prompt 8 tokens, 24 positions" in lines[0]
