"""`arlm prepare --out DIR --overwrite` replaces prepared data only, and its messages name the flag used."""

from arlm.cli import main


def _mydocs(tmp_path):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    return mine


def test_a_folder_of_other_files_is_never_replaced(tmp_path, corpus_dir, capsys):
    mine = _mydocs(tmp_path)
    argv = ["prepare", "--out", str(mine), "--data.source", str(corpus_dir), "--data.tokenizer", "char"]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds files but no prepared data" in err and "another --out" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "precious"


def test_data_of_other_settings_names_the_flag_given(tmp_path, corpus_dir, capsys):
    argv = ["prepare", "--out", str(tmp_path / "d"), "--data.source", str(corpus_dir), "--data.tokenizer", "char"]
    assert main(argv) == 0
    assert main([*argv, "--data.lowercase", "true"]) == 2
    assert "choose another --out" in capsys.readouterr().err
