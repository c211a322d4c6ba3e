"""A k-token forward with a KV cache gives each row the bits that k one-token forwards give on the CPU (what makes
a speculative verification agree with greedy steps exactly): in 16 bits, in float32 with the batch-invariant
decoding layout, and with int8 / int4 weights whose kernels round their inputs to bfloat16 (where 1e-7 differences
would otherwise become other tokens). Attention of a verification runs query by query (model/attention.py); the
test fails when it runs all queries at once."""

import pytest
import torch

from arlm.config import ModelConfig
from arlm.decoding.speculative import MAX_ADAPTIVE_DRAFT
from arlm.model.attention import STEPWISE_QUERIES
from arlm.model.inference import optimize_for_decoding
from arlm.model.quant import quantize_model
from arlm.model.transformer import Transformer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, "int8", "int4"])
def test_k_token_forward_equals_one_token_steps(dtype):
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=64, init_std=0.3)
    model = Transformer(config).eval()
    quantized = isinstance(dtype, str)  # the 64-output head stays float (int4 packs outputs by 16)
    model = quantize_model(model, dtype, head=False) if quantized else model.to(dtype)
    model = optimize_for_decoding(model, batch_invariant=True)  # float Linear layers: batch-invariant
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(0))  # (1, 20)
    with torch.no_grad():
        cache = model.new_cache(1, 64)
        model(ids[:, :10], kv_cache=cache)
        steps = torch.cat([model(ids[:, i : i + 1], kv_cache=cache)[0] for i in range(10, 20)])  # (10, V)
        cache.rollback(10)
        many = model(ids[:, 10:], kv_cache=cache)[0]  # (10, V)
    assert torch.equal(steps, many)


def test_every_verification_width_attends_query_by_query():
    """The widest block speculative decoding verifies (adaptive drafts, plus the last accepted token) is within
    the widths that attend query by query, so that it gives the bits of one-token steps."""
    assert MAX_ADAPTIVE_DRAFT + 1 <= STEPWISE_QUERIES
