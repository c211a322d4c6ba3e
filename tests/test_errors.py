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


@pytest.mark.parametrize(
    ("read_only", "why"), [(True, "is on a read-only file system"), (False, "is not writable by this user")]
)
def test_check_creatable_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch, read_only, why):
    """The nearest existing folder is asked (access(2): a read-only mount refuses even root); the reason is the
    mount's flag."""
    import os

    asked = []
    flags = os.ST_RDONLY if read_only else 0
    monkeypatch.setattr(os, "access", lambda path, mode: asked.append((str(path), mode)) or False)
    monkeypatch.setattr(os, "statvfs", lambda path: type("V", (), {"f_flag": flags})())
    with pytest.raises(ArlmError, match=rf"cannot write {tmp_path}/new/x\.png: {tmp_path} {why}; write elsewhere"):
        check_creatable(tmp_path / "new" / "x.png")
    assert asked == [(str(tmp_path), os.W_OK | os.X_OK)]


def test_check_creatable_opens_the_file_where_permissions_do_not_tell(tmp_path):
    """/proc makes no files, though access(2) lets root write there: refused before any work. A file it can write is
    left as it was, and one it made to try is removed."""
    import os

    with pytest.raises(ArlmError, match=r"cannot write /proc/arlm-figure\.png: .*; write elsewhere"):
        check_creatable("/proc/arlm-figure.png")
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"figure")
    os.utime(kept, (1, 1))
    check_creatable(kept)
    check_creatable(tmp_path / "new.png")
    assert kept.read_bytes() == b"figure" and kept.stat().st_mtime == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.png"]


def test_optional_package_imports_it_or_names_the_extra_in_one_line(monkeypatch):
    """One wording for every extra (four commands had their own), the import error's chain left out."""
    import json
    import sys

    from arlm.errors import optional_package

    assert optional_package("json", "x", "y") is json
    monkeypatch.setitem(sys.modules, "transformers", None)  # (import transformers raises ImportError)
    with pytest.raises(ArlmError) as caught:
        optional_package("transformers", "arlm bench decode", "hf")
    assert str(caught.value) == "arlm bench decode needs transformers: pip install 'arlm[hf]'"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("package", ["uvicorn", "fastapi", "prometheus_client"])
def test_serve_without_its_extra_is_one_line_naming_it(monkeypatch, capsys, package):
    """Each of the serve extra's packages missing: one line before a model is loaded or a port bound."""
    import sys

    from arlm.cli import main

    monkeypatch.setitem(sys.modules, package, None)
    assert main(["serve", "/nonexistent/model", "--port", "0"]) == 2
    assert capsys.readouterr().err == f"error: arlm serve needs {package}: pip install 'arlm[serve]'\n"
