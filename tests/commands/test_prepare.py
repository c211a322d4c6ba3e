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


def test_an_output_inside_the_source_folder_is_refused(tmp_path, corpus_dir, capsys, monkeypatch):
    """A source folder holding the output would read arlm's own files (the scratch text being written, a run's
    train.lock) as documents: prepare and train refuse it, and write nothing."""
    import shutil

    shutil.copytree(corpus_dir, tmp_path / "texts")
    monkeypatch.chdir(tmp_path / "texts")
    before = sorted(p.name for p in (tmp_path / "texts").iterdir())
    assert main(["prepare", "--data.source", ".", "--data.tokenizer", "char", "--out", "prep"]) == 2
    assert "data.source . holds --out prep: the files arlm writes there" in capsys.readouterr().err
    argv = ["train", "--data.source", ".", "--data.tokenizer", "char", "--train.out_dir", "runs/x"]
    assert main(argv) == 2
    assert "data.source . holds --train.out_dir runs/x" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "texts").iterdir()) == before


def test_data_another_prepare_wrote_meanwhile_is_kept(tmp_path, corpus_dir, capsys, monkeypatch):
    """Two prepares into one folder: the one that finishes second refuses (it replaced the other's data)."""
    import shutil

    from arlm.data import prepare as prep

    out, real = tmp_path / "d", prep._prepare_into

    def racing(config, tmp, *args):
        text = real(config, tmp, *args)
        shutil.copytree(tmp, out)  # another process's prepare finished first
        (out / "theirs").write_text("x")
        return text

    monkeypatch.setattr(prep, "_prepare_into", racing)
    assert main(["prepare", "--out", str(out), "--data.source", str(corpus_dir), "--data.tokenizer", "char"]) == 2
    assert "was prepared by another process meanwhile; its data is kept" in capsys.readouterr().err
    assert (out / "theirs").exists() and not list(tmp_path.glob("d.tmp-*"))


def test_a_prepare_killed_midway_leaves_nothing_behind_the_next_one(tmp_path, corpus_dir, capsys):
    """kill -9 during prepare leaves OUT.tmp-PID (its scratch text, part of the shards); the next prepare of OUT
    removes it, says so, and writes its data."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "d"
    slow = (  # a prepare stopped inside its work, where only kill -9 ends it
        "import sys, time; from arlm.data import prepare as p; real = p._prepare_into\n"
        "def stuck(config, tmp, *a):\n    (tmp / 'started').write_text('x'); time.sleep(60)\n"
        "p._prepare_into = stuck\nfrom arlm.cli import main\n"
        f"main(['prepare', '--out', {str(out)!r}, '--data.source', {str(corpus_dir)!r}, '--data.tokenizer', 'char'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", slow])
    tmp = tmp_path / f"d.tmp-{proc.pid}"
    for _ in range(600):  # at most 60 s
        if (tmp / "started").exists():
            break
        time.sleep(0.1)
    assert (tmp / "started").exists()
    argv = ["prepare", "--out", str(out), "--data.source", str(corpus_dir), "--data.tokenizer", "char"]
    assert main(argv) == 0  # while the first one still runs, its temporary is kept
    assert tmp.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main([*argv, "--overwrite"]) == 0
    assert f"removed {tmp}, left by a prepare that was stopped" in capsys.readouterr().out
    assert not tmp.exists() and not list(tmp_path.glob("*.tmp-*")) and (out / "meta.json").exists()
