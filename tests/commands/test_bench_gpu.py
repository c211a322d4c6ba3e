"""`arlm bench gpu`: refusals before any section runs."""

import sys

from arlm.cli import main


def test_without_transformers_the_sections_that_need_it_are_refused_before_any_work(monkeypatch, capsys, tmp_path):
    """Two tracebacks, exit 1 and a results.json of errors, after the dtypes section's compiles had run."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # (import transformers raises ImportError)
    assert main(["bench", "gpu", "--cpu-smoke", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "error: arlm bench gpu (its train and decode sections) needs transformers: pip install 'arlm[hf]'\n"
    )
    assert not (tmp_path / "out").exists()
