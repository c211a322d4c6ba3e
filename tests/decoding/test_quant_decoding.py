"""Speculative decoding and prompt lookup stay exact at every --dtype: at temperature 0 their output equals
greedy decoding of the same (converted) target for gamma 1..8. The models are prepared as the commands prepare
them (interop.loading.to_dtype, then optimize_for_decoding)."""

import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.generate import generate
from arlm.interop.loading import to_dtype
from arlm.model.inference import optimize_for_decoding
from arlm.model.transformer import Transformer

DTYPES = ("float32", "bfloat16", "int8", "int4")


def _model(seed, layers=2, d=64, dtype="float32"):
    torch.manual_seed(seed)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=256, n_layer=layers, n_head=4, d_model=d,
                         init_std=0.3)  # fmt: skip
    return optimize_for_decoding(to_dtype(Transformer(config).eval(), dtype))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_speculative_and_prompt_lookup_equal_greedy_for_every_gamma(dtype):
    target, draft = _model(0, dtype=dtype), _model(1, layers=1, d=32, dtype=dtype)
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=24, stop_at_eos=False)
    plain = generate(target, [[1, 2, 3, 4, 5]], greedy).generated()[0]
    grounded = [[1, 2, 3] + plain[:14]]  # a prompt that quotes what the target goes on to write
    plain_grounded = generate(target, grounded, greedy).generated()[0]
    proposed = 0
    for gamma in range(1, 9):
        spec = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=24, num_draft_tokens=gamma,
                                stop_at_eos=False)  # fmt: skip
        assert generate(target, [[1, 2, 3, 4, 5]], spec, draft=draft).generated()[0] == plain, gamma
        lookup = GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=24, num_draft_tokens=gamma,
                                  stop_at_eos=False)  # fmt: skip
        out = generate(target, grounded, lookup)
        assert out.generated()[0] == plain_grounded, gamma
        proposed += out.stats["proposed"]
    assert proposed > 0  # the lookup did draft, and its drafts were verified (whether the random model's
    # continuation then follows the quote, and so how many are accepted, depends on the dtype's rounding)
