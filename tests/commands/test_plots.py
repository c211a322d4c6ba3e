import pytest

from arlm.commands.plots import figure_path
from arlm.errors import ArlmError


def test_figure_path_wants_an_image_suffix_and_a_creatable_folder(tmp_path):
    assert figure_path(tmp_path / "sub" / "p.svg") == tmp_path / "sub" / "p.svg"
    (tmp_path / "f.txt").write_text("x")
    for bad, message in (
        (tmp_path / "p.txt", "suffix matplotlib writes"),
        (tmp_path / "noext", "suffix matplotlib writes"),
        (tmp_path / "f.txt" / "p.png", "f.txt is a file"),
    ):
        with pytest.raises(ArlmError, match=message):
            figure_path(bad)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ArlmError, match="is a folder"):
        figure_path(tmp_path / "d.png")
