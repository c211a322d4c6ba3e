import pytest

from arlm.errors import ArlmError, check_creatable


def test_check_creatable_refuses_a_file_above_the_path(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    check_creatable(tmp_path / "new" / "deeper" / "x.png")  # missing folders are made later
    for path in (tmp_path / "f.txt" / "x.png", tmp_path / "f.txt" / "a" / "b"):
        with pytest.raises(ArlmError, match=r"f\.txt is a file, not a folder"):
            check_creatable(path)
    with pytest.raises(ArlmError, match="is a file, not a folder; choose a folder"):
        check_creatable(tmp_path / "f.txt", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # nothing made
