"""A LoRA run: checkpoints of adapters only, merged on load and by `arlm merge`, and loaded by PEFT."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from arlm.cli import main
from arlm.commands.train import train_command
from arlm.config import config_from_dict
from arlm.errors import ArlmError
from arlm.interop.checkpoint import open_checkpoint
from arlm.interop.loading import load_model
from arlm.interop.lora import load_lora_checkpoint
from arlm.model.lora import LoRALinear, add_lora, is_adapter_key
from arlm.model.transformer import Transformer
from tests.helpers import chat_raw, tiny_base, write_chat


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """(base checkpoint, finished LoRA run) of a tiny llama fine-tuned for 20 steps on chat data."""
    tmp = tmp_path_factory.mktemp("lora")
    base = tiny_base(tmp / "base")
    config = config_from_dict(chat_raw(tmp, base, write_chat(tmp / "chat.jsonl"))).validate()
    train_command(config, log=lambda _: None)
    return base, tmp / "run"


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 9, 3, 12, 20, 7, 1, 30, 2, 14, 11, 8]])


def _adapted_unmerged(base, run) -> torch.nn.Module:
    """Base + adapters computed the long way: W x + (alpha / r) B A x, nothing folded."""
    checkpoint = open_checkpoint(run)
    model = Transformer(checkpoint.config.model)
    model.load_state_dict(load_model(base).model.state_dict())
    add_lora(model, checkpoint.config.train.lora)
    model.load_state_dict(checkpoint.model_state(), strict=False)
    return model.eval()


def test_a_lora_checkpoint_holds_only_the_adapters_and_names_its_base(lora_run):
    base, run = lora_run
    checkpoint = open_checkpoint(run)
    weights = load_file(checkpoint.path / "model.safetensors")
    assert weights and all(is_adapter_key(k) for k in weights)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if k.endswith("lora_B"))  # it trained
    assert checkpoint.meta["lora_base"]["reference"] == str(base.resolve())
    assert (checkpoint.path / "model.safetensors").stat().st_size < (base / "model.safetensors").stat().st_size / 3


def test_merge_gives_the_logits_of_base_plus_adapters(lora_run, tmp_path):
    base, run = lora_run
    with torch.no_grad():
        expected = _adapted_unmerged(base, run)(_ids())
        assert main(["merge", str(run), str(tmp_path / "merged")]) == 0
        merged = load_model(tmp_path / "merged")
        assert not any(isinstance(m, LoRALinear) for m in merged.model.modules())
        assert torch.allclose(merged.model(_ids()), expected, atol=1e-5, rtol=0)
        assert torch.allclose(load_model(run).model(_ids()), expected, atol=1e-5, rtol=0)  # merged on load
    assert merged.config.train.lora.rank == 0


@pytest.mark.hf
def test_the_peft_layout_loads_onto_the_transformers_model(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, run = lora_run
    assert main(["export", "hf", str(base), str(tmp_path / "hf")]) == 0
    adapter = open_checkpoint(run).path / "peft"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, adapter).eval()
    with torch.no_grad():
        expected = _adapted_unmerged(base, run)(_ids())
        assert torch.allclose(peft_model(_ids()).logits, expected, atol=1e-4, rtol=0)
        with peft_model.disable_adapter():  # the adapters count
            assert not torch.allclose(peft_model(_ids()).logits, expected, atol=1e-3)


def test_commands_downstream_take_a_lora_run(lora_run, tmp_path, capsys):
    _, run = lora_run
    assert main(["generate", str(run), "--prompt", "user: hi", "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert main(["eval", "perplexity", str(run)]) == 0
    assert main(["export", "hf", str(run), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_a_base_model_whose_weights_changed_is_refused(lora_run, tmp_path):
    _, run = lora_run
    other = tiny_base(tmp_path / "other", seed=1)
    with pytest.raises(ArlmError, match="adapts a base model that .* no longer holds"):
        load_lora_checkpoint(open_checkpoint(run), lambda _reference: load_model(other))


def test_a_lora_run_finds_its_base_in_the_base_run_that_trained_on(tmp_path):
    base_run = tmp_path / "base-run"
    tiny_base(base_run / "checkpoints" / "step-00000001")
    raw = chat_raw(tmp_path, base_run, write_chat(tmp_path / "chat.jsonl"), train={"max_steps": 2})
    train_command(config_from_dict(raw).validate(), log=lambda _: None)
    with torch.no_grad():
        expected = load_model(tmp_path / "run").model(_ids())
        tiny_base(base_run / "checkpoints" / "step-00000002", seed=1)  # the base run trained on
        assert torch.equal(load_model(tmp_path / "run").model(_ids()), expected)  # its step 1 still adapted
        for step in base_run.glob("checkpoints/step-*"):
            if step.name.endswith("1"):
                (step / "manifest.json").unlink()  # that checkpoint gone: refused, naming it (it was the run folder)
        trained_on = re.escape(f"({(base_run / 'checkpoints' / 'step-00000001').resolve()}, which it was read from)")
        with pytest.raises(ArlmError, match=f"adapts a base model that .* no longer holds .*{trained_on}"):
            load_model(tmp_path / "run")


def test_a_base_record_without_the_checkpoint_it_was_read_from_is_the_same_base():
    """Runs from before 2026-12-07 record a run-folder base by reference and hash alone: comparing whole records
    refused to resume every one of them ("holds no adapters of this shape")."""
    from arlm.interop.lora import same_base

    old = {"reference": "/runs/base", "sha256": "ab"}
    now = {**old, "checkpoint": "/runs/base/checkpoints/step-00000004"}
    assert same_base(old, now) and same_base(now, old)
    assert not same_base({**old, "sha256": "cd"}, now) and not same_base(None, now)
