"""LoRA adapters: exact at initialisation, merged equal to base + adapter, only the adapters train."""

import pytest
import torch

from arlm.config import LoRAConfig, ModelConfig
from arlm.model.lora import LoRALinear, add_lora, has_lora, merge_lora, weights_sha256
from arlm.model.transformer import Transformer


def _model(flavour: str = "llama") -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(flavour=flavour, vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    return Transformer(config).eval()


@pytest.mark.parametrize("targets", [["attn"], ["mlp"], ["qkv", "down"], ["attn", "mlp"]])
def test_at_initialisation_the_logits_are_the_base_models_exactly(targets):
    model = _model()
    ids = torch.randint(0, 50, (2, 16))
    before = model(ids)
    trainable = add_lora(model, LoRAConfig(rank=4, alpha=8, targets=targets))
    assert torch.equal(model(ids), before)
    names = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"lora_A", "lora_B"} and trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    wrapped = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {t for g in targets for t in {"attn": ["qkv", "proj"], "mlp": ["up", "down"]}.get(g, [g])}


def test_the_update_is_alpha_over_rank_times_b_a_and_merging_folds_it_in():
    model = _model()
    ids = torch.randint(0, 50, (2, 16))
    add_lora(model, LoRAConfig(rank=4, alpha=8, targets=["attn", "mlp"]))
    for module in model.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_B, std=0.05)
    layer = model.blocks[0].attn.qkv
    x = torch.randn(3, 32)
    expected = x @ (layer.base.weight + 2.0 * layer.lora_B @ layer.lora_A).T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    adapted = model(ids)
    merge_lora(model)
    assert not has_lora(model)
    assert set(model.state_dict()) == set(_model().state_dict())
    assert torch.allclose(model(ids), adapted, atol=1e-5, rtol=0)


def test_the_base_hash_ignores_adapters_and_sees_any_changed_weight():
    model = _model()
    digest = weights_sha256(model.state_dict())
    add_lora(model, LoRAConfig(rank=2))
    assert weights_sha256(model.state_dict()) == digest
    with torch.no_grad():
        model.norm.weight[0] += 1e-3
    assert weights_sha256(model.state_dict()) != digest


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_small_update_survives_bfloat16_autocast_as_in_the_merged_layer(dropout):
    """Added to W x after autocast had rounded it to bfloat16, an update below half its last place vanished: a young
    adapter's change came out a third of float32's (the slope of the one on the other), so bf16 LoRA trained and
    reported another model than the one it saved and merged. Folded into the weight, the forward is the merged
    layer's at bfloat16; for a float32 W (off the grid) its rounding is noise around the whole update."""
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(256, 128), rank=8, alpha=16, dropout=dropout)
    torch.nn.init.normal_(layer.lora_B, std=1e-4)  # a young adapter: |B A| a ten-thousandth of |W|
    x = torch.randn(512, 256)
    wanted = (x @ layer.lora_A.T @ layer.lora_B.T * layer.scaling).flatten().detach()  # float32's update
    layer.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = (layer(x).float() - layer.base(x).float()).flatten()  # what the bfloat16 forward adds
    assert 0.9 < float(got @ wanted / (wanted @ wanted)) < 1.1  # (0.34 before)
    merged = torch.nn.Linear(256, 128)
    merged.load_state_dict({"weight": layer.base.weight + (layer.lora_B @ layer.lora_A) * layer.scaling,
                            "bias": layer.base.bias})  # fmt: skip
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), merged(x))  # the merged layer at bfloat16, exactly
    layer.train()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0 and layer.base.weight.grad is None
    if dropout:  # the dropped inputs' share is taken out: the same as the float32 layer under the same mask
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = layer(x).float()
        torch.manual_seed(2)
        theirs = layer.base(x) + layer.dropout(x) @ layer.lora_A.T @ layer.lora_B.T * layer.scaling
        assert torch.allclose(ours, theirs, atol=0.05)
