import errno
import json
import os
import shutil

import pytest
import torch

from arlm.config import ModelConfig, RunConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.errors import ArlmError
from arlm.interop.checkpoint import (
    is_run_or_checkpoint,
    latest_checkpoint,
    open_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_every_file_of_a_checkpoint_is_as_readable_as_the_umask_allows(tmp_path, umask, mode):
    """safetensors writes its files for their owner alone (0600): a run or export shared with another account
    could not be read, while its config and tokenizer could (the umask's mode)."""
    old = os.umask(umask)
    try:
        path = _save(tmp_path, 3)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.rglob("*") if p.is_file()}
    assert {"model.safetensors", "state.safetensors", "config.json"} <= set(modes)
    assert set(modes.values()) == {mode}, modes


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


def _rewrite_manifest(path):
    """Recompute the manifest after a deliberate edit, so only the edit itself is wrong."""
    from arlm.interop.checkpoint import _write_manifest

    (path / "manifest.json").unlink()
    _write_manifest(path)


def _stray(run, step, *, size_off=0):
    """A step-* folder copied from the newest checkpoint, its manifest listing a wrong size for the weights."""
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    stray = run / "checkpoints" / f"step-{step:08d}"
    shutil.copytree(newest, stray)
    manifest = json.loads((stray / "manifest.json").read_text())
    manifest["files"]["model.safetensors"]["bytes"] += size_off
    (stray / "manifest.json").write_text(json.dumps(manifest))
    return stray


def test_prune_deletes_only_intact_checkpoints_of_this_run(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    folder = tmp_path / "checkpoints"
    wrong_size = _stray(tmp_path, 99999999, size_off=1)
    copied = _stray(tmp_path, 99999998)  # intact files, but its config.json says step 3
    bad_shape = folder / "step-99999997"
    shutil.copytree(folder / "step-00000003", bad_shape)
    (bad_shape / "manifest.json").write_text("[1, 2]")
    unfinished = folder / "step-99999996"
    unfinished.mkdir()
    strays = prune_checkpoints(tmp_path, keep=1)
    assert sorted(strays) == sorted([wrong_size, copied, bad_shape, unfinished])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["step-00000003", wrong_size.name, copied.name, bad_shape.name, unfinished.name]
    )
    open_checkpoint(folder / "step-00000003")  # the newest intact one, kept and whole
    _save(tmp_path, 4)
    prune_checkpoints(tmp_path, keep=1, data_fingerprint="another run's data")
    assert (folder / "step-00000003").exists() and (folder / "step-00000004").exists()  # neither is this run's


def test_prune_removes_stale_temporaries_and_trash_only(tmp_path):
    _save(tmp_path, 1)
    folder = tmp_path / "checkpoints"
    for name in (".step-00000002.tmp-999999", ".trash-step-00000000", ".trash-step-00000003.tmp-5", ".user-notes"):
        (folder / name).mkdir()
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == [".user-notes", "step-00000001"]


@pytest.mark.parametrize(
    "manifest", ["[1, 2]", '{"files": [1]}', '{"files": {"config.json": 3}}', '{"files": {}}', "\xff"]
)
def test_a_manifest_of_the_wrong_shape_is_one_error_and_resume_falls_back(tmp_path, manifest):
    _save(tmp_path, 10)
    newest = _save(tmp_path, 20)
    (newest / "manifest.json").write_text(manifest, encoding="latin-1")
    with pytest.raises(ArlmError, match="corrupt manifest.json"):
        open_checkpoint(newest)
    warnings = []
    assert latest_checkpoint(tmp_path, log=warnings.append).name == "step-00000010"
    assert len(warnings) == 1 and "step-00000020" in warnings[0]


def test_manifest_names_outside_the_checkpoint_are_refused(tmp_path):
    path = _save(tmp_path, 10)
    (tmp_path / "outside").write_text("x")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../outside"] = {"bytes": 1, "sha256": "0" * 64}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArlmError, match="corrupt manifest.json"):
        verify_checkpoint(path)


@pytest.mark.parametrize("config", ["[1, 2, 3]", "{not json", '{"format": "something-else"}'])
def test_a_config_json_of_the_wrong_shape_is_one_error(tmp_path, config):
    path = _save(tmp_path, 10)
    (path / "config.json").write_text(config)
    _rewrite_manifest(path)  # the manifest agrees: only the record itself is wrong
    with pytest.raises(ArlmError, match="config.json"):
        open_checkpoint(path)


def test_a_failed_save_leaves_no_temporary_and_says_why(tmp_path, monkeypatch):
    import arlm.interop.checkpoint as ckpt

    _save(tmp_path, 1)

    def disk_full(tensors, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    for _ in range(2):
        with pytest.raises(ArlmError, match="could not write checkpoint .*step-00000002: No space left on device"):
            _save(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    open_checkpoint(tmp_path / "checkpoints" / "step-00000001")


def test_a_checkpoint_pruned_while_read_is_replaced_by_the_newest(tmp_path, monkeypatch):
    from arlm.interop.checkpoint import Checkpoint, read_checkpoint

    _save(tmp_path, 1)
    _save(tmp_path, 2)
    real = Checkpoint.model_state
    pruned = []

    def trainer_saves_and_prunes_first(self, *args, **kwargs):
        if len(pruned) < 1:  # what a training process does between our verify and our load
            _save(tmp_path, self.meta["step"] + 1)
            prune_checkpoints(tmp_path, keep=1)
            pruned.append(self.path.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "model_state", trainer_saves_and_prunes_first)
    weights, name = read_checkpoint(tmp_path, lambda c: (c.model_state(), c.path.name))
    assert pruned == ["step-00000002"] and name == "step-00000003"
    assert torch.equal(weights["w"], torch.full((4, 4), 3.0))
    pruned.clear()  # a checkpoint named by the user (not a run folder) cannot be replaced: one line
    with pytest.raises(ArlmError, match="step-00000003 was deleted while it was being read"):
        read_checkpoint(tmp_path / "checkpoints" / "step-00000003", lambda c: c.model_state())


def test_what_is_no_run_or_checkpoint_is_named_so_not_called_unfinished(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for path in (text, hf):
        assert not is_run_or_checkpoint(path)
        with pytest.raises(ArlmError, match=f"^{path} is not an arlm run or checkpoint$"):
            resolve_checkpoint(path)
    unfinished = tmp_path / "run" / "checkpoints" / "step-5"
    unfinished.mkdir(parents=True)
    assert is_run_or_checkpoint(unfinished) and is_run_or_checkpoint(tmp_path / "run")
    with pytest.raises(ArlmError, match="incomplete"):
        resolve_checkpoint(unfinished)
