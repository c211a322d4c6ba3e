"""Model references: which loader a folder goes to, and readers of a run that is being trained."""

import json
import time

import pytest
import torch

from arlm.commands.train import train_command
from arlm.errors import ArlmError
from arlm.interop import loading
from arlm.interop.checkpoint import _write_manifest
from arlm.interop.loading import DTYPES, load_model, pick_device, resolve_dtype
from arlm.model.quant import Int8Linear, is_quantized
from tests.helpers import kill, start_train, tiny_config, tiny_raw, wait_for, write_yaml


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run folder with checkpoints at steps 5 and 10."""
    from tests.helpers import write_corpus

    tmp = tmp_path_factory.mktemp("loading")
    config = tiny_config(tmp, write_corpus(tmp / "corpus"), train={"max_steps": 10, "checkpoint_interval": 5})
    train_command(config, log=lambda _: None)
    return tmp / "run"


def _with_model_type(checkpoint, tmp_path):
    """A copy of a checkpoint whose config.json also names a transformers model_type (manifest agreeing)."""
    import shutil

    copy = tmp_path / "step-00000010"
    shutil.copytree(checkpoint, copy)
    record = json.loads((copy / "config.json").read_text())
    record["model_type"] = "llama"
    (copy / "config.json").write_text(json.dumps(record))
    (copy / "manifest.json").unlink()
    _write_manifest(copy)
    return copy


def test_an_arlm_checkpoint_with_model_type_is_still_verified(run, tmp_path):
    copy = _with_model_type(run / "checkpoints" / "step-00000010", tmp_path)
    assert load_model(copy).source == str(copy)  # loaded as the arlm checkpoint it is
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])
    with pytest.raises(ArlmError, match="truncated or damaged"):
        load_model(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ArlmError, match="incomplete"):
        load_model(copy)


def test_a_copied_run_is_scored_on_its_own_data(run, tmp_path, monkeypatch):
    """A run copied elsewhere (or evaluated from another folder) finds RUN/data inside it, not the data its saved
    train.out_dir names (another run's, or none)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    monkeypatch.chdir(tmp_path)
    for model in (copy, sorted((copy / "checkpoints").iterdir())[0]):
        assert loading.run_data(load_model(model), "val").directory == copy / "data"


def test_a_sweeps_run_finds_the_shared_data_beside_it_from_any_folder(tmp_path, monkeypatch):
    """A run given a relative data.prepared_dir beside it (a sweep's OUT/LABEL and OUT/data), evaluated from another
    folder or copied with its sweep, finds that data where it lies beside the run, not relative to the folder it is
    evaluated from (none there, or another sweep's)."""
    import shutil

    from tests.helpers import write_corpus

    trained = tmp_path / "trained"
    trained.mkdir()
    monkeypatch.chdir(trained)
    config = tiny_config(
        tmp_path, write_corpus(tmp_path / "corpus"), train={"out_dir": "sw/a", "max_steps": 5}, data={}
    )
    config.data.prepared_dir = "sw/data"
    train_command(config, log=lambda _: None)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(trained / "sw", elsewhere / "sw")
    for here, run in ((tmp_path, trained / "sw" / "a"), (trained, elsewhere / "sw" / "a")):
        monkeypatch.chdir(here)
        assert loading.run_data(load_model(run), "val").directory == run.parent / "data"


def test_a_runs_data_prepared_again_with_other_settings_is_not_taken_for_its_own(run, tmp_path):
    """A sweep's shared data prepared again under its earlier runs (other settings: there another val_fraction, and
    eval scored a "val" split holding text the run had trained on). Refused; --data DIR still scores it knowingly."""
    import shutil

    from arlm.data.prepare import prepare

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    loaded = load_model(copy)
    config = loaded.config.data
    config.text_field = "body"  # (other settings, the same text: a plain-text corpus has no fields)
    prepare(config, copy / "data", log=lambda _: None, overwrite=True)
    with pytest.raises(ArlmError, match="were prepared with other settings than .* was trained on"):
        loading.run_data(loaded, "val")
    assert loading.run_data(loaded, "val", copy / "data").directory == copy / "data"


def test_a_transformers_folder_goes_to_the_hf_loader(tmp_path, monkeypatch):
    class Reached(Exception):
        pass

    def hf_loader(path):
        raise Reached(path)

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr(loading, "load_hf_folder", hf_loader)
    with pytest.raises(Reached):
        load_model(tmp_path)


@pytest.mark.slow
def test_loading_a_run_while_it_trains_and_prunes(tmp_path, corpus_dir):
    """A real training process writes and prunes a checkpoint every step; loads of its run folder meanwhile
    all succeed (each may race with a prune between verify and load)."""
    train = {"max_steps": 400, "checkpoint_interval": 1, "keep_checkpoints": 1, "eval_interval": 1000}
    preset = write_yaml(tmp_path / "tiny.yaml", tiny_raw(tmp_path, corpus_dir, train=train))
    out = tmp_path / "busy"
    proc = start_train(preset, out)
    sources = []
    try:
        if wait_for(lambda: any((out / "checkpoints").glob("step-*")), proc):
            deadline = time.monotonic() + 240  # bounded; loads go on until the run has moved on twice
            while proc.poll() is None and len(set(sources)) < 3 and time.monotonic() < deadline:
                sources.append(load_model(out).source)
    finally:
        stderr = kill(proc)
    assert len(set(sources)) > 1, f"the run did not advance while it was read; make it longer: {stderr}"


def test_resolve_dtype_names_and_refusals():
    assert DTYPES == ("float32", "bfloat16", "float16", "int8", "int4", "mixed")
    assert resolve_dtype(None).float_dtype == torch.float32 and resolve_dtype(None).quant is None
    assert resolve_dtype(torch.bfloat16).name == "bfloat16"
    assert resolve_dtype("int4").quant == "int4" and resolve_dtype("int4").float_dtype == torch.float32
    with pytest.raises(ArlmError, match="unknown dtype 'int2'"):
        resolve_dtype("int2")
    with pytest.raises(ArlmError, match="CPU only"):
        resolve_dtype("int4", "cuda")
    assert resolve_dtype("int8", "cuda").float_dtype == torch.bfloat16  # a GPU's int8 layers compute in bfloat16
    assert pick_device("auto", "int4").type == "cpu"
    for name in ("mps", "meta"):
        with pytest.raises(ArlmError, match=f"device '{name}' is not one arlm runs on; use auto, cpu, cuda or cuda:N"):
            pick_device(name)


def test_a_cuda_index_beyond_the_machines_gpus_is_refused_in_one_line(monkeypatch):
    """cuda:5 on a machine of two GPUs was taken, and the weights read, before PyTorch's 'invalid device ordinal'."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1") and pick_device("cuda") == torch.device("cuda")
    with pytest.raises(
        ArlmError, match=r"^device cuda:5 does not exist: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1$"
    ):
        pick_device("cuda:5")


def test_a_checkpoint_loads_at_every_dtype(run):
    for dtype in ("float32", "bfloat16", "int8"):
        model = load_model(run, dtype=dtype).model
        assert model.tok_emb.weight.dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        assert is_quantized(model) == (dtype == "int8")
    assert isinstance(load_model(run, dtype="int8").model.lm_head, Int8Linear)
    auto, float32 = load_model(run, dtype="auto"), load_model(run, dtype="float32")  # a checkpoint holds float32
    assert auto.dtype == "float32" and not is_quantized(auto.model)
    assert all(torch.equal(a, b) for a, b in zip(auto.model.state_dict().values(), float32.model.state_dict().values()))


@pytest.mark.slow
@pytest.mark.real_model
def test_starting_to_generate_from_smollm2_never_imports_torch_dynamo():
    """`arlm generate smollm2` at float32 and int4 starts without torch._dynamo, whose import alone costs ~1 s (a
    decorator at import, random draws on the meta device, RoPE tables computed there all imported it once)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from arlm.cli import main\n"
        "for dtype in ('float32', 'int4'):\n"
        "    assert main(['generate', 'smollm2', '--prompt', 'Hi', '--dtype', dtype, '--temperature', '0',\n"
        "                 '--max-new-tokens', '3']) == 0\n"
        "print('dynamo imported:', 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("dynamo imported: False")
