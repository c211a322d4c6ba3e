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
