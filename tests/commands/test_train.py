"""`arlm train`'s command line: overrides the run would not read are refused before any work."""

import pytest

from arlm.cli import main


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--preset", "smollm2-sft", "--model.n_layer", "2"], "--model.n_layer does nothing with train.init"),
        (["--preset", "smollm2-sft", "--model.flavour", "gpt2"], "--model.flavour does nothing with train.init"),
        (
            ["--preset", "smollm2-sft", "--train.lora.rank", "0", "--train.lora.alpha", "64"],
            "--train.lora.alpha does nothing at train.lora.rank 0",
        ),
        (["--train.lora.dropout", "0.1"], "--train.lora.dropout does nothing at train.lora.rank 0"),
    ],
)
def test_an_override_the_run_would_not_read_is_refused(tmp_path, capsys, overrides, message):
    assert main(["train", *overrides, "--train.out_dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
