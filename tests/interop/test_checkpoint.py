import pytest
import torch

from arlm.config import ModelConfig, RunConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.errors import ArlmError
from arlm.interop.checkpoint import (
    latest_checkpoint,
    open_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)


def _save(run, step, weights=None):
    tok = VocabTokenizer.train("char", ["abc"], 0)
    weights = weights if weights is not None else {"w": torch.full((4, 4), float(step))}
    return save_checkpoint(
        run / "checkpoints" / f"step-{step:08d}",
        weights=weights,
        tokenizer=tok,
        config=RunConfig(model=ModelConfig(vocab_size=6)),
        meta={"step": step},
        state={"step": step},
        state_tensors={"rng.cpu.rank0": torch.get_rng_state()},
    )


def test_round_trip_and_no_temporary_left(tmp_path):
    path = _save(tmp_path, 10)
    ckpt = open_checkpoint(path)
    assert ckpt.meta["step"] == 10 and ckpt.config.model.vocab_size == 6
    assert torch.equal(ckpt.model_state()["w"], torch.full((4, 4), 10.0))
    state, tensors = ckpt.train_state()
    assert state["step"] == 10 and "rng.cpu.rank0" in tensors
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000010"]
    assert not any(p.suffix == ".pkl" or p.name.endswith((".pt", ".bin")) for p in path.rglob("*"))


def test_truncated_checkpoint_is_refused_and_the_previous_one_named(tmp_path):
    _save(tmp_path, 10)
    newest = _save(tmp_path, 20)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ArlmError, match=r"truncated or damaged.*newest intact checkpoint is .*step-00000010"):
        resolve_checkpoint(newest)
    warnings = []
    assert latest_checkpoint(tmp_path, log=warnings.append).name == "step-00000010"
    assert "step-00000020" in warnings[0]
    assert resolve_checkpoint(tmp_path).name == "step-00000010"  # a run folder resolves to its newest intact one


def test_flipped_byte_and_unfinished_checkpoint(tmp_path):
    path = _save(tmp_path, 10)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArlmError, match="does not match its checksum"):
        open_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArlmError, match="incomplete"):
        open_checkpoint(path)


def test_nan_weights_are_never_saved(tmp_path):
    with pytest.raises(ArlmError, match="NaN or Inf"):
        _save(tmp_path, 5, weights={"w": torch.tensor([1.0, float("nan")])})
    assert not (tmp_path / "checkpoints" / "step-00000005").exists()


def test_keep_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
