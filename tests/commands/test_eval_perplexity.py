import pytest

from arlm.commands.eval_perplexity import eval_command, window_and_stride
from arlm.errors import ArlmError

# Every refusal comes before the model is read: no model needed (the reference would not load).
NO_MODEL = "no-such-run"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"file": "t.txt", "stride": -5}, "--stride -5"),
        ({"file": "t.txt", "context": -5}, "--context -5"),
        ({"context": -3}, "--context -3"),
        ({"file": "t.txt", "max_chars": -5}, "--max-chars -5"),
        ({"batches": -1}, "--batches -1"),
        ({"stride": 8}, "--stride goes with --file"),
        ({"max_chars": 100, "compare_transformers": True}, "--max-chars, --compare-transformers go with --file"),
        ({"kv_dtype": "float32"}, "--kv-dtype goes with --file"),
        ({"encoding_errors": "replace"}, "--encoding-errors goes with --file"),
        ({"file": "t.txt", "batches": 2}, "--batches goes with a prepared split"),
        ({"file": "t.txt", "split": "val", "data_dir": "d"}, "--split, --data go with a prepared split"),
    ],
)
def test_refuses_values_and_options_the_mode_would_not_read(options, message):
    with pytest.raises(ArlmError, match=message):
        eval_command(NO_MODEL, device="cpu", log=lambda _: None, **options)


def test_window_and_stride_per_mode():
    assert window_and_stride(2048, 0, 0, on_file=True) == (2048, 1024)  # a file: the model's whole context
    assert window_and_stride(2048, 0, 0, on_file=False) == (1024, 512)  # a split: at most 1024
    assert window_and_stride(64, 16, 16, on_file=True) == (16, 16)
    with pytest.raises(ArlmError, match="--context 128 exceeds the model's context of 64"):
        window_and_stride(64, 128, 0, on_file=False)
    with pytest.raises(ArlmError, match="--stride 17 exceeds the window of 16"):
        window_and_stride(64, 16, 17, on_file=True)


@pytest.mark.slow
@pytest.mark.real_model
def test_a_model_without_its_training_data_here_asks_for_data_or_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/quickstart/data here
    with pytest.raises(
        ArlmError, match="found no prepared data of .* at runs/quickstart/data; give --data DIR or --file"
    ):
        eval_command("smollm2", device="cpu", log=lambda _: None)


def test_a_text_file_given_as_data_is_pointed_to_file(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text")
    with pytest.raises(ArlmError, match=f"^--data takes a prepared folder; {text} is a file: score it with --file"):
        eval_command(NO_MODEL, data_dir=str(text), device="cpu", log=lambda _: None)


def test_a_file_of_invalid_utf8_is_scored_with_encoding_errors_replace(tmp_path, capsys):
    """The refusal pointed to --data.encoding_errors, which eval perplexity does not take."""
    from arlm.cli import main
    from tests.helpers import tiny_base

    model, text = tiny_base(tmp_path / "m"), tmp_path / "bad.txt"
    text.write_bytes(b"hello there, " * 8 + b"\xff bytes")
    argv = ["eval", "perplexity", str(model), "--file", str(text), "--device", "cpu"]
    assert main(argv) == 2
    assert "--encoding-errors replace" in capsys.readouterr().err
    assert main([*argv, "--encoding-errors", "replace"]) == 0
    assert "loss" in capsys.readouterr().out
