import json
import os

import pytest

from arlm.cli import main
from arlm.commands.eval_icl import icl_command, lm_eval_command
from arlm.errors import ArlmError
from arlm.evaluation import icl
from tests.evaluation.test_icl import save_tiny_checkpoint, tiny  # noqa: F401  (the module fixture)


def test_icl_command_writes_json_and_plot(tiny, tmp_path):  # noqa: F811
    model, tokenizer = tiny
    checkpoint = save_tiny_checkpoint(model, tokenizer, tmp_path / "ckpt")
    lines = []
    results = icl_command(
        str(checkpoint), tasks=["antonyms"], shots=(0, 1), scoring="loglikelihood", limit=4,
        out_dir=tmp_path / "out", device="cpu", log=lines.append,
    )  # fmt: skip
    saved = json.loads((tmp_path / "out" / "icl.json").read_text(encoding="utf-8"))
    assert saved["tasks"]["antonyms"]["by_shots"]["1"]["n"] == 4
    assert saved["measured"] == {"source": str(checkpoint), "dtype": "float32", "device": "cpu"}
    assert (
        saved["tasks"]["antonyms"]["by_shots"]["0"]["accuracy"]
        == results["tasks"]["antonyms"]["by_shots"][0]["accuracy"]
    )
    assert (tmp_path / "out" / "icl.png").stat().st_size > 1000
    assert any("| antonyms | 4 |" in line for line in lines)


@pytest.mark.slow
@pytest.mark.hf
def test_model_reference_through_the_registry_and_lm_eval_command(tiny, tmp_path):  # noqa: F811
    if os.environ.get("CI", "").lower() not in ("1", "true"):  # in CI a missing lm_eval must fail, not skip
        pytest.importorskip("lm_eval")
    model, tokenizer = tiny
    checkpoint = save_tiny_checkpoint(model, tokenizer, tmp_path / "ckpt")
    lines = []
    (results,) = lm_eval_command(str(checkpoint), ["capitals"], [1], 5, device="cpu", log=lines.append)
    assert results["results"]["arlm_capitals"]["sample_len"] == 5
    ours = icl.run_icl(model, tokenizer, ["capitals"], (1,), "loglikelihood", 5)["tasks"]["capitals"]["by_shots"][1]
    assert results["results"]["arlm_capitals"]["acc,none"] == pytest.approx(ours["accuracy"])
    assert "arlm_capitals" in "\n".join(lines)


def test_an_out_folder_that_is_a_file_is_refused_before_the_model_is_read(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ArlmError, match="is a file, not a folder"):
        icl_command("no-such-run", out_dir=tmp_path / "f.txt", log=lambda _: None)


def test_num_beams_refused_with_loglikelihood_scoring(tmp_path):
    with pytest.raises(ArlmError, match="--num-beams goes with --scoring generate"):
        icl_command("no-such-run", scoring="loglikelihood", num_beams=4, out_dir=tmp_path, log=lambda _: None)


def test_lm_eval_refuses_the_options_it_does_not_read(tmp_path, capsys):
    argv = ["eval", "icl", "no-such-run", "--lm-eval", "--scoring", "generate", "--num-beams", "3", "--out", "lmx"]
    assert main(argv) == 2
    assert "error: --scoring, --num-beams, --out go with arlm's own evaluation" in capsys.readouterr().err


def test_lm_eval_without_its_extra_is_one_line_naming_it(monkeypatch, capsys):
    """It ended in a traceback (ModuleNotFoundError, exit 1): lm_eval was imported before the adapter that says
    which extra installs it."""
    import sys

    from arlm.cli import main

    for name in [n for n in sys.modules if n == "lm_eval" or n.startswith(("lm_eval.", "arlm.evaluation.lm_eval"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # (import lm_eval raises ImportError)
    assert main(["eval", "icl", "smollm2", "--lm-eval", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the lm-eval adapter needs lm-evaluation-harness: pip install 'arlm[lm-eval]'\n"


@pytest.mark.parametrize(("dtype", "device"), [("int4", "cpu"), ("mixed", "cpu"), ("bfloat16", "cuda")])
def test_lm_eval_picks_the_device_as_every_verb_does(monkeypatch, dtype, device):
    """--device auto with --lm-eval on a CUDA machine: the CPU for int4 / mixed (CPU-only kernels), as generate and
    arlm's own evaluation pick it; it took CUDA, where the load refused the dtype with 'use --device cpu'."""
    import torch

    import arlm.commands.eval_icl as eval_icl

    given = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(eval_icl, "lm_eval_command", lambda *args, **kwargs: given.update(kwargs))
    assert main(["eval", "icl", "smollm2", "--lm-eval", "--dtype", dtype, "--limit", "2"]) == 0
    assert given["device"] == device
