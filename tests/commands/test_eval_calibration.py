import pytest

from arlm.commands.eval_calibration import calibration_command
from arlm.errors import ArlmError


def test_negative_batches_refused_before_any_run_is_read(tmp_path):
    with pytest.raises(ArlmError, match="--batches -1"):
        calibration_command(["no-such-run"], batches=-1, out=tmp_path / "cal.png", log=lambda _: None)
