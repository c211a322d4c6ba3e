"""A k-token forward with a KV cache gives each row the bits that k one-token forwards give in 16 bits on the CPU
(what makes speculative verification agree with greedy steps in bfloat16), the Linear layers laid out as decoding
lays them out. Not asserted for float32: CPU SDPA rounds a query's row differently with 10 queries than with
one (at the 1e-7 level; seen with torch 2.13), and 16-bit attention is computed in float32 so that this
difference is rounded away in all but rare ties (model/attention.py)."""

import pytest
import torch

from arlm.config import ModelConfig
from arlm.model.inference import optimize_for_decoding
from arlm.model.transformer import Transformer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_k_token_forward_equals_one_token_steps(dtype):
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=64, init_std=0.3)
    model = optimize_for_decoding(Transformer(config).eval().to(dtype))  # 16 bits: batch-invariant Linear layers
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(0))  # (1, 20)
    with torch.no_grad():
        cache = model.new_cache(1, 64)
        model(ids[:, :10], kv_cache=cache)
        steps = torch.cat([model(ids[:, i : i + 1], kv_cache=cache)[0] for i in range(10, 20)])  # (10, V)
        cache.rollback(10)
        many = model(ids[:, 10:], kv_cache=cache)[0]  # (10, V)
    assert torch.equal(steps, many)
