import torch

from arlm.config import ModelConfig
from arlm.model.transformer import Transformer
from arlm.training.mfu import mfu, peak_flops


def test_peak_table_override_and_mfu():
    assert peak_flops(torch.device("cpu"), "bfloat16") is None
    assert peak_flops(torch.device("cpu"), "float32", override_tflops=2.0) == 2e12
    assert mfu(1000.0, 6e9, 1e13) == 0.6
    assert mfu(1000.0, 6e9, None) is None


def test_flops_per_token_is_6n_plus_attention():
    model = Transformer(ModelConfig(flavour="gpt2", vocab_size=100, block_size=64, n_layer=2, n_head=2, d_model=32))
    n = model.num_params() - model.pos_emb.weight.numel()  # tied table counted once, as the output matmul
    assert model.flops_per_token(64) == 6 * n + 12 * 2 * 64 * 32
