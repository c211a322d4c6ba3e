import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arlm.config import ModelConfig
from arlm.model.transformer import Transformer
from arlm.training.loss import next_token_loss
from arlm.training.mfu import mfu, peak_flops


def test_peak_table_override_and_mfu():
    assert peak_flops(torch.device("cpu"), "bfloat16") is None
    assert peak_flops(torch.device("cpu"), "float32", override_tflops=2.0) == 2e12
    assert mfu(1000.0, 6e9, 1e13) == 0.6
    assert mfu(1000.0, 6e9, None) is None


@pytest.mark.parametrize(("flavour", "tied"), [("gpt2", True), ("llama", False)])
def test_flops_per_token_equals_torch_flop_counter(flavour, tied):
    """FLOPs of a real forward and backward pass, counted by torch's FlopCounterMode (matrix products only),
    against the formula; the formula also counts 6 FLOPs per vector parameter (norm weights, biases), which only
    cost element-wise work, so those are added to the count. Naive attention: the counter sees its T x T products
    (it has no formula for the CPU SDPA kernel)."""
    torch.manual_seed(0)
    shape = dict(vocab_size=100, block_size=64, n_layer=2, n_head=4, d_model=32, tie_embeddings=tied)
    extra = {"n_kv_head": 2} if flavour == "llama" else {}
    model = Transformer(ModelConfig(flavour=flavour, attention="naive", **shape, **extra))
    x = torch.randint(0, 100, (2, 64))
    with FlopCounterMode(display=False) as counter:
        loss = next_token_loss(model(x), x).loss_sum / x.numel()  # (the trainer's loss)
        loss.backward()
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert model.flops_per_token(64) == counter.get_total_flops() / x.numel() + 6 * vectors
