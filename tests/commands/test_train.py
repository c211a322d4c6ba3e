"""`arlm train --overwrite` replaces prepared data in data.prepared_dir, never a folder of other files."""

from arlm.cli import main
from tests.helpers import tiny_raw, write_yaml


def test_overwrite_never_replaces_a_folder_of_other_files_as_data(tmp_path, corpus_dir, capsys):
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir))
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    argv = ["train", "--preset", str(preset), "--data.prepared_dir", str(mine), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds files but no prepared data" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "precious"
