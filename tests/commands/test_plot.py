import pytest

from arlm.commands.plot import plot_command
from arlm.errors import ArlmError


def test_a_figure_path_that_cannot_be_written_is_refused(tmp_path):
    with pytest.raises(ArlmError, match="suffix matplotlib writes"):
        plot_command(["no-such-run"], str(tmp_path / "p.txt"), log=lambda _: None)
