import json
import math
import re

import pytest
import torch

from arlm.commands.train import train_command
from arlm.errors import ArlmError
from arlm.training.logging import read_metrics
from tests.helpers import tiny_config


def _train_losses(run_dir):
    return [r["train_nll"] for r in read_metrics(run_dir / "metrics.jsonl") if "train_nll" in r]


def test_tiny_run_learns_and_writes_everything(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 40, "lr": 1e-2})
    lines = []
    summary = train_command(config, log=lines.append)
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["train_nll"] for r in records if "train_nll" in r]
    assert losses[-1] < losses[0] - 0.5
    assert summary.final["val"].loss < math.log(config.model.vocab_size)
    assert set(summary.final) == {"train", "val", "test"}
    assert summary.final["val"].bits_per_byte > 0
    assert (run / "loss.png").stat().st_size > 1000
    assert records[-1]["event"] == "final" and "final_test_ppl" in records[-1]
    for key in ("step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in records[0]
    assert any("val_loss" in r for r in records)
    assert json.loads((run / "config.json").read_text())["model"]["n_layer"] == 2


def test_accumulation_matches_one_big_batch(tmp_path, corpus_dir):
    curves = []
    for i, (batch, accum) in enumerate(((8, 1), (4, 2), (2, 4))):
        config = tiny_config(
            tmp_path / str(i),
            corpus_dir,
            train={"batch_size": batch, "grad_accum": accum, "max_steps": 6, "checkpoint_interval": 0},
        )
        train_command(config, log=lambda _: None)
        curves.append(_train_losses(tmp_path / str(i) / "run"))
    for other in curves[1:]:
        assert other == pytest.approx(curves[0], rel=1e-5)


def test_label_smoothing_logs_the_unsmoothed_nll(tmp_path, corpus_dir):
    """Step 1 (the same initial weights and batch) logs under smoothing as train_nll exactly what a run without
    smoothing logs as its loss (a band around log V passed with the two numbers swapped: both are ~log V there)."""
    firsts = []
    for smoothing in (0.0, 0.1):
        train = {"label_smoothing": smoothing, "max_steps": 2, "log_interval": 1}
        config = tiny_config(tmp_path / str(smoothing), corpus_dir, train=train)
        train_command(config, log=lambda _: None)
        firsts.append(read_metrics(tmp_path / str(smoothing) / "run" / "metrics.jsonl")[0])
    plain, smoothed = firsts
    assert plain["step"] == smoothed["step"] == 1
    assert smoothed["train_nll"] == plain["train_loss"] == plain["train_nll"]
    assert smoothed["train_loss"] != smoothed["train_nll"]


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, corpus_dir, monkeypatch):
    from arlm.model.transformer import Transformer

    original = Transformer.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        return out * float("nan") if self.training and calls["n"] > 3 else out

    monkeypatch.setattr(Transformer, "forward", poisoned)
    config = tiny_config(tmp_path, corpus_dir, train={"max_nonfinite_steps": 3, "checkpoint_interval": 2})
    with pytest.raises(ArlmError, match="non-finite for 3 steps in a row"):
        train_command(config, log=lambda _: None)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "nonfinite"] == [4, 5, 6]
    from arlm.interop.checkpoint import open_checkpoint

    folder = tmp_path / "run" / "checkpoints"
    # step 4 was skipped (weights unchanged) and checkpointed; step 6 stopped the run before its checkpoint
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002", "step-00000004"]
    for path in folder.iterdir():
        state = open_checkpoint(path).model_state()
        assert all(torch.isfinite(t).all() for t in state.values())


def test_existing_run_is_not_clobbered(tmp_path, corpus_dir):
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 2})
    train_command(config, log=lambda _: None)
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(ArlmError, match="already holds a run"):
        train_command(config, log=lambda _: None)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before


def test_activation_checkpointing_same_curve_and_plain_names(tmp_path, corpus_dir):
    from safetensors import safe_open

    curves = []
    for flag in (False, True):
        config = tiny_config(
            tmp_path / str(flag),
            corpus_dir,
            model={"dropout": 0.1},
            train={"max_steps": 6, "activation_checkpointing": flag},
        )
        train_command(config, log=lambda _: None)
        curves.append(_train_losses(tmp_path / str(flag) / "run"))
    assert curves[1] == pytest.approx(curves[0], abs=1e-5)
    newest = sorted((tmp_path / "True" / "run" / "checkpoints").glob("step-*"))[-1]
    with safe_open(newest / "state.safetensors", "pt") as f:
        assert not any("_checkpoint_wrapped_module" in k for k in f.keys())  # noqa: SIM118 - safe_open handle


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_training_on_gpu(tmp_path, corpus_dir, dtype):
    config = tiny_config(
        tmp_path, corpus_dir, train={"device": "cuda", "dtype": dtype, "max_steps": 30, "lr": 1e-2, "compile": True}
    )
    summary = train_command(config, log=lambda _: None)
    losses = _train_losses(tmp_path / "run")
    assert losses[-1] < losses[0] - 0.3 and all(math.isfinite(v) for v in losses)
    assert summary.final["val"].loss < math.log(config.model.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_compiled_training_follows_the_eager_curve(tmp_path, corpus_dir, smoothing, monkeypatch):
    """torch.compile of forward and loss together (one process) trains as the eager step does."""
    from torch._dynamo.utils import counters

    compiled, real_compile = [], torch.compile

    def recording_compile(fn, *args, **kwargs):
        compiled.append(getattr(fn, "__name__", type(fn).__name__))
        return real_compile(fn, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    counters.clear()
    curves = []
    for flag in (False, True):
        config = tiny_config(
            tmp_path / str(flag),
            corpus_dir,
            train={"max_steps": 4, "log_interval": 1, "compile": flag, "label_smoothing": smoothing},
        )
        train_command(config, log=lambda _: None)
        curves.append(_train_losses(tmp_path / str(flag) / "run"))
    assert len(curves[0]) == 4
    assert "_forward_loss" in compiled  # forward and loss compiled as one function, not the model alone
    assert counters["frames"]["ok"] > 0  # and compiled frames did run
    assert curves[1] == pytest.approx(curves[0], abs=1e-4)


def test_the_final_report_is_bounded_by_default(tmp_path, corpus_dir):
    from arlm.config import TrainConfig

    bound = TrainConfig().final_eval_batches
    assert bound > 0  # 0 would score the whole train split: hours on a large corpus
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 1, "final_eval_batches": bound})
    summary = train_command(config, log=lambda _: None)
    rows = config.train.batch_size * config.model.block_size
    assert summary.final["train"].tokens == bound * rows  # the train split holds more than that
    assert summary.final["val"].tokens < bound * rows  # a small split is scored whole


def test_evaluation_streams_its_batches_and_shows_progress_on_a_terminal(tmp_path, corpus_dir, monkeypatch):
    import io
    import sys
    import weakref

    from arlm.data.batches import BatchSampler

    count = {"alive": 0, "most": 0, "made": 0}
    packed = BatchSampler._packed

    def died():
        count["alive"] -= 1

    def tracked(self, offsets):
        batch = packed(self, offsets)
        weakref.finalize(batch, died)
        count["alive"] += 1
        count["made"] += 1
        count["most"] = max(count["most"], count["alive"])
        return batch

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(BatchSampler, "_packed", tracked)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 1, "final_eval_batches": 0})
    summary = train_command(config, log=lambda _: None)
    assert summary.final["train"].tokens > 200 * config.model.block_size  # the whole split: hundreds of batches
    assert count["made"] > 200 and count["most"] <= 3  # made one at a time, never held in a list
    shown = terminal.getvalue()
    for split in ("train", "val", "test"):  # a tqdm bar per split of the final report
        assert re.search(rf"eval {split}: +\d+%\|", shown), shown


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, corpus_dir, capsys):
    train_command(tiny_config(tmp_path, corpus_dir, train={"max_steps": 1}), log=lambda _: None)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("interval,kept", [(2, "the newest checkpoint is step-00000002"), (0, "no checkpoint yet")])
def test_an_interrupted_run_says_what_it_keeps(tmp_path, corpus_dir, monkeypatch, interval, kept):
    """Ctrl-C said "interrupted" alone: with checkpoint_interval 0 (the SFT preset's) a whole run went, unsaid."""
    from arlm.training.trainer import Trainer

    step, calls = Trainer.train_step, []

    def interrupted_at_the_fourth(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_the_fourth)
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 6, "checkpoint_interval": interval})
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train_command(config, log=lines.append)
    assert f"interrupted after step 3: {kept}" in lines[-1]


def test_tensorboard_without_its_package_is_refused_before_the_run_is_made(tmp_path, corpus_dir, monkeypatch):
    """The refusal came once config.json and metrics.jsonl were written: the same command then met 'already holds a
    run', and --resume the same refusal again."""
    import sys

    for name in [n for n in sys.modules if n.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # (its import raises ImportError)
    config = tiny_config(tmp_path, corpus_dir, train={"max_steps": 2, "tensorboard": True})
    with pytest.raises(ArlmError, match=r"pip install 'arlm\[tensorboard\]'"):
        train_command(config, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_compiling_batches_of_varying_length_is_refused_with_the_setting_that_fixes_it(tmp_path):
    """Chat data (padded to each batch's longest row) crashed the compiled step at its third batch, in an inductor
    assertion; padded to the block it trains."""
    from arlm.config import config_from_dict
    from tests.helpers import chat_raw, tiny_base, write_chat

    raw = chat_raw(tmp_path, tiny_base(tmp_path / "base"), write_chat(tmp_path / "c.jsonl"), train={"compile": True})
    with pytest.raises(ArlmError, match=r"^--train.compile needs batches of one length here: add --data.pad_to block"):
        train_command(config_from_dict(raw).validate(), log=lambda _: None)
    assert not (tmp_path / "run").exists()
