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
