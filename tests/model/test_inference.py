import pytest
import torch
import torch.nn.functional as F

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.generate import generate
from arlm.model import inference
from arlm.model.inference import ChunkedLinear, linear_is_batch_invariant, optimize_for_decoding
from arlm.model.transformer import Transformer


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_linear_equals_linear(bias):
    linear = torch.nn.Linear(24, 36, bias=bias)
    chunked = ChunkedLinear(linear, chunks=4)
    for shape in ((1, 24), (3, 5, 24), (7, 24)):
        x = torch.randn(shape)
        torch.testing.assert_close(chunked(x), linear(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_optimized_model_decodes_the_same(flavour):
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour=flavour, vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=32, init_std=0.3)
    ).eval()
    x = torch.randint(0, 64, (2, 20))
    before = model(x)
    config = GenerationConfig(strategy="greedy", max_new_tokens=20)
    plain = generate(model, [[1, 2, 3]], config).generated()
    optimize_for_decoding(model, chunks=2)
    assert any(isinstance(m, ChunkedLinear) for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert generate(model, [[1, 2, 3]], config).generated() == plain


def test_chunked_linear_is_batch_invariant():
    """A row gets the same bits alone as among others (continuous batching relies on it)."""
    torch.manual_seed(0)
    for chunks, (d_in, d_out) in [(1, (32, 50)), (2, (64, 96)), (3, (48, 99))]:
        chunked = ChunkedLinear(torch.nn.Linear(d_in, d_out), chunks=chunks, batch_invariant=True)
        x = torch.randn(9, d_in)
        together = chunked(x)
        for i in range(9):
            assert torch.equal(chunked(x[i : i + 1]), together[i : i + 1])
        assert torch.equal(chunked(x[2:5]), together[2:5])


def test_batch_invariance_is_the_default_for_16_bit_weights_only():
    """16-bit speculative verification needs it (tests/model/test_attention.py); float32 batch 1 goes faster
    without it; the server asks for it in every dtype. A 16-bit Linear whose own kernel is invariant stays."""
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=1, n_head=4, d_model=32)
    for dtype, asked, expected in [(torch.float32, None, False), (torch.bfloat16, None, True),
                                   (torch.float16, None, True), (torch.float32, True, True)]:  # fmt: skip
        model = optimize_for_decoding(Transformer(config).eval().to(dtype), chunks=2, batch_invariant=asked)
        chunked = [m for m in model.modules() if isinstance(m, ChunkedLinear)]
        kept = [m for m in model.modules() if type(m) is torch.nn.Linear]
        assert chunked or kept
        assert all(m.batch_invariant == expected for m in chunked), (dtype, asked)
        assert all(linear_is_batch_invariant(m.weight.detach()) for m in kept), (dtype, asked)
        assert dtype != torch.float32 or not kept


def test_the_probe_finds_a_kernel_that_rounds_by_the_number_of_rows(monkeypatch):
    """A kernel whose bits change with the number of rows (from 5 on, as blocked kernels do) fails the probe; a
    padded layout, invariant by construction, passes."""
    weight = torch.randn(48, 16).to(torch.bfloat16)
    monkeypatch.setattr(inference, "_PROBED", {})
    real = F.linear
    monkeypatch.setattr(inference.F, "linear", lambda x, w: real(x, w) * (1 + 2**-7 * (x.shape[0] >= 5)))
    assert not linear_is_batch_invariant(weight, rows=8)
    monkeypatch.setattr(inference, "_PROBED", {})
    layer = ChunkedLinear(torch.nn.Linear(16, 48), chunks=2, batch_invariant=True).to(torch.bfloat16)
    monkeypatch.setattr(inference.F, "linear", lambda x, w: layer(x))
    assert linear_is_batch_invariant(weight, rows=8)
