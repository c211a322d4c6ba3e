"""The KV cache at the precision asked (GenerationConfig.kv_dtype, `--kv-dtype`): every strategy's caches are of that
dtype; a bfloat16 cache under a float32 model decodes as transformers does with a cache that rounds what it stores to
bfloat16 (on PyTorch's attention and on arlm's kernel); speculative decoding stays greedy's; the server's slots too."""

import collections
import typing

import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.engine import KV_DTYPES, Engine, cache_dtype
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer
from tests.helpers import hf_generate, hf_pair, hf_rounding_cache


def _model(seed=0, layers=2, d=32):
    torch.manual_seed(seed)
    config = ModelConfig(flavour="llama", vocab_size=50, block_size=64, n_layer=layers, n_head=4, d_model=d)
    return Transformer(config).eval()


STRATEGIES = {
    "greedy": dict(strategy="greedy", max_new_tokens=10),
    "sample": dict(strategy="sample", max_new_tokens=10, seed=3),
    "beam": dict(strategy="beam", num_beams=3, max_new_tokens=6),
    "speculative": dict(strategy="speculative", temperature=0, max_new_tokens=10),
    "prompt-lookup": dict(strategy="prompt-lookup", temperature=0, max_new_tokens=10),
}


@pytest.mark.parametrize("kv", ["auto", "float32", "bfloat16"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_decodes_over_caches_of_the_dtype_asked(name, kv, monkeypatch):
    opened = collections.Counter()
    original = Engine.open

    def open_(self, *args, **kwargs):
        cache = original(self, *args, **kwargs)
        opened[cache.k.dtype] += 1
        return cache

    monkeypatch.setattr(Engine, "open", open_)
    draft = _model(1, layers=1) if name == "speculative" else None  # a separate draft: a cache of its own
    config = GenerationConfig(**STRATEGIES[name], kv_dtype=kv)
    out = generate(_model(), [[1, 2, 3, 1, 2, 3, 1, 2]], config, draft=draft)
    assert out.stats["new_tokens"] > 0
    assert set(opened) == {torch.bfloat16 if kv == "bfloat16" else torch.float32}
    assert sum(opened.values()) == (2 if draft is not None else 1)


def test_the_engines_kv_dtypes_are_the_configs():
    assert typing.get_args(typing.get_type_hints(GenerationConfig)["kv_dtype"]) == KV_DTYPES


def test_a_kv_dtype_outside_the_choices_is_refused_in_one_line():
    with pytest.raises(ArlmError, match="kv_dtype must be one of auto, float32, bfloat16"):
        GenerationConfig(kv_dtype="float16").validate()
    with pytest.raises(ArlmError, match="kv_dtype must be one of"):
        cache_dtype("int8")


def test_a_bfloat16_cache_takes_half_the_memory():
    model = _model()
    wide, half = (model.new_cache(2, 64, dtype=dtype) for dtype in (torch.float32, torch.bfloat16))
    assert half.k.nbytes * 2 == wide.k.nbytes and half.v.nbytes * 2 == wide.v.nbytes


def _hf_greedy(model, ids: list[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens over the rounding cache, and the logits of the first new token (V,)."""
    prompt, mask = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)  # (1, T) each
    steps = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    out = hf_generate(model, prompt, mask, cache=hf_rounding_cache(), output_logits=True, **steps)
    return out.sequences[0, len(ids) :].tolist(), out.logits[0][0]


@pytest.mark.hf
def test_a_bfloat16_cache_decodes_as_transformers_rounding_its_cache(tmp_path):
    ours, theirs = hf_pair(tmp_path)
    prompt = [5, 6, 7, 8, 9, 10, 11]
    tokens, logits = _hf_greedy(theirs, prompt, 16)
    config = GenerationConfig(strategy="greedy", max_new_tokens=16, stop_at_eos=False, kv_dtype="bfloat16")
    assert generate(ours, [prompt], config).generated()[0] == tokens
    cache = ours.new_cache(1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        first = ours(torch.tensor([prompt]), kv_cache=cache)[0, -1]  # (V,)
    torch.testing.assert_close(first, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.hf
@pytest.mark.real_model
def test_smollm2_with_a_bfloat16_cache_decodes_as_transformers_rounding_its_cache(smollm2, hf_smollm2):
    """SmolLM2 laid out for decoding (its steps on arlm's attention kernel where it builds: the kernel writes the
    cache PyTorch's ops write, tests/model/test_attention.py) gives transformers' greedy tokens."""
    import copy

    from arlm.model.inference import optimize_for_decoding

    model = optimize_for_decoding(copy.deepcopy(smollm2.model))
    prompt = smollm2.tokenizer.encode("The three primary colours are")
    config = GenerationConfig(strategy="greedy", max_new_tokens=12, stop_at_eos=False, kv_dtype="bfloat16")
    assert generate(model, [prompt], config).generated()[0] == _hf_greedy(hf_smollm2, prompt, 12)[0]


@pytest.mark.parametrize("strategy", ["speculative", "prompt-lookup"])
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_speculative_decoding_over_a_bfloat16_cache_is_greedy_over_it(strategy, gamma):
    from arlm.decoding.drafts import self_draft

    target = _model(0, layers=3)
    prompt = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2]]
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=20, stop_at_eos=False, kv_dtype="bfloat16")
    expected = generate(target, prompt, greedy).generated()[0]
    spec = GenerationConfig(
        strategy=strategy, temperature=0, num_draft_tokens=gamma, max_new_tokens=20, stop_at_eos=False,
        kv_dtype="bfloat16",
    )  # fmt: skip
    draft = self_draft(target, 1) if strategy == "speculative" else None  # drafts over the target's bfloat16 cache
    assert generate(target, prompt, spec, draft=draft).generated()[0] == expected
