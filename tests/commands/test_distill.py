"""`arlm distill`: a draft's shape and tokenizer are its teacher's, so overrides of them are refused in one line
before the teacher loads (they were ignored without a word)."""

import pytest

from arlm.cli import main


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            ["--model.d_model", "64"],
            "--model.d_model does nothing here: the draft's shape is its teacher's (use --layers)",
        ),
        (["--data.tokenizer", "bpe"], "--data.tokenizer does nothing here: the draft uses its teacher's tokenizer"),
    ],
)
def test_settings_the_teacher_decides_are_refused(override, message, capsys, monkeypatch):
    import arlm.interop.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded"))
    assert main(["distill", "--teacher", "nowhere.gguf", *override]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
