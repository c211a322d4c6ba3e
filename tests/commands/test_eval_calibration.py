import pytest

from arlm.commands.eval_calibration import calibration_command
from arlm.errors import ArlmError


def test_negative_batches_refused_before_any_run_is_read(tmp_path):
    with pytest.raises(ArlmError, match="--batches -1"):
        calibration_command(["no-such-run"], batches=-1, out=tmp_path / "cal.png", log=lambda _: None)


@pytest.mark.parametrize("out", ["cal.txt", "f.txt/cal.png"])
def test_a_figure_path_that_cannot_be_written_is_refused_before_any_run_is_read(tmp_path, out):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ArlmError, match="suffix matplotlib writes|is a file"):
        calibration_command(["no-such-run"], out=tmp_path / out, log=lambda _: None)


def test_a_folder_where_the_numbers_go_is_refused_before_any_run_is_read(tmp_path):
    """(it ended in IsADirectoryError after the whole measurement)"""
    (tmp_path / "cal.json").mkdir()
    with pytest.raises(ArlmError, match=r"cal.json is a folder; the numbers go there"):
        calibration_command(["no-such-run"], out=tmp_path / "cal.png", log=lambda _: None)
