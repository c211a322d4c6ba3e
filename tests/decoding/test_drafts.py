"""Self-speculation: the draft is the target's first layers plus its own norm and head, with no weights of its own,
and speculative decoding with it is exact."""

import copy
import dataclasses

import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.drafters import ModelDrafter
from arlm.decoding.drafts import parse_self_draft, self_draft, shares_cache, shares_weights
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.decoding.processors import History
from arlm.decoding.speculative import draft_cost
from arlm.errors import ArlmError
from arlm.interop.loading import DTYPES, to_dtype
from arlm.model.inference import optimize_for_decoding
from arlm.model.transformer import Transformer
from tests.helpers import two_token_pvalue


def _model(vocab=50, layers=4, flavour="llama"):
    torch.manual_seed(0)
    config = ModelConfig(
        flavour=flavour, vocab_size=vocab, block_size=128, n_layer=layers, n_head=4, d_model=32, init_std=0.3
    )
    return Transformer(config).eval()


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_self_draft_is_the_targets_first_layers_with_its_head(flavour):
    target = _model(flavour=flavour)
    draft = self_draft(target, 2)
    assert shares_weights(draft, target) and len(draft.blocks) == 2 and len(target.blocks) == 4
    # reference: a 2-layer model of the same class holding the target's tensors for those layers
    reference = Transformer(draft.config).eval()
    kept = {k: v for k, v in target.state_dict().items() if not k.startswith(("blocks.2", "blocks.3"))}
    reference.load_state_dict(kept)
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(draft(x), reference(x), rtol=0, atol=0)
    assert draft.new_cache(1, 16).k.shape[0] == 2  # its cache holds its own layers only


@pytest.mark.parametrize("layout", ["as trained", "for decoding", "int8", "int4"])
def test_a_drafts_cost_is_its_share_of_the_weights_a_token_reads(layout):
    """Adaptive gamma prices a drafted token at the draft's share of the bytes a token reads: laid out for decoding or
    quantized, the weights are buffers, and counting parameters alone priced a self-draft at a whole target forward."""
    target = _model(vocab=64, layers=4)
    block = sum(p.numel() * 4 for p in target.blocks[0].parameters())  # float32 bytes of one block
    head = (target.lm_head.weight.numel() + target.norm.weight.numel()) * 4  # the tied table, read by the head
    shared = head + sum(b.numel() * 4 for b in target.rotary.buffers())  # and RoPE's tables
    config = GenerationConfig(strategy="speculative", temperature=0)
    if layout == "for decoding":
        optimize_for_decoding(target)
    elif layout != "as trained":
        target = optimize_for_decoding(to_dtype(target, layout, "cpu"))
    cost = draft_cost(target, self_draft(target, 2), config)
    if layout in ("as trained", "for decoding"):
        assert cost == pytest.approx((2 * block + shared) / (4 * block + shared), rel=1e-6)
    else:  # int8 / int4 blocks shrink while the tied head stays float32: a larger share than that, not all
        assert (2 * block + shared) / (4 * block + shared) < cost < 0.9
    assert draft_cost(target, None, config) == 0.0


@pytest.mark.parametrize("layers", [1, 3])
def test_self_speculation_equals_greedy(layers):
    target = optimize_for_decoding(_model())
    prompt = [[1, 2, 3, 4, 5]]
    plain = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=30)).generated()[0]
    for gamma, adaptive in ((1, False), (5, False), (4, True)):
        config = GenerationConfig(
            strategy="speculative", temperature=0, max_new_tokens=30, num_draft_tokens=gamma, adaptive_draft=adaptive
        )
        assert generate(target, prompt, config, draft=self_draft(target, layers)).generated()[0] == plain


def test_the_targets_own_int4_weights_draft_for_it_exactly():
    """`self:int4`: the target's weights quantized to int4 draft for it, at a fraction of its bytes a token; the
    output is the target's greedy output whatever gamma (how often SmolLM2's int4 copy agrees with it:
    tests/interop/test_gguf_quant.py)."""
    base = _model(vocab=64)
    draft = optimize_for_decoding(to_dtype(copy.deepcopy(base), "int4", "cpu"))
    target = optimize_for_decoding(base)
    assert 0.0 < draft_cost(target, draft, GenerationConfig(strategy="speculative", temperature=0)) < 0.5
    prompt = [[1, 2, 3, 4, 5]]
    plain = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=40)).generated()[0]
    for gamma, adaptive in ((1, False), (4, False), (4, True)):
        config = GenerationConfig(
            strategy="speculative", temperature=0, max_new_tokens=40, num_draft_tokens=gamma, adaptive_draft=adaptive
        )
        out = generate(target, prompt, config, draft=draft)
        assert out.generated()[0] == plain, (gamma, adaptive)


def test_which_drafts_draft_over_the_targets_cache():
    """The target's own first layers and the target at another precision read the target's keys and values; a
    separate draft (other weights, or another shape) and one whose cache would hold another dtype keep their own."""
    base = _model(vocab=64)
    int4 = optimize_for_decoding(to_dtype(copy.deepcopy(base), "int4", "cpu"))
    target = optimize_for_decoding(base)
    f32 = torch.float32
    assert shares_cache(self_draft(target, 2), target, f32) and shares_cache(int4, target, f32)
    assert shares_cache(target, target, f32)
    separate = _model(vocab=64, layers=2)  # the target's shape on 2 layers, but its own blocks (a distilled draft)
    narrow = Transformer(dataclasses.replace(base.config, d_model=16)).eval()
    assert not shares_cache(separate, target, f32) and not shares_cache(narrow, target, f32)
    bf16 = optimize_for_decoding(to_dtype(copy.deepcopy(base), "bfloat16", "cpu"))
    assert not shares_cache(int4, bf16, torch.bfloat16)  # an int4 draft computes in float32


@pytest.mark.parametrize("kind", ["self:2", "self:int4"])
def test_a_draft_over_the_targets_cache_makes_one_token_forwards_and_leaves_the_cache_as_it_was(kind):
    """No forward over the prompt, no catch-up: every draft forward is one token, and the target's cached positions
    (and its length) are what they were, the drafted tokens' keys and values lying past them."""
    base = _model(vocab=64)
    draft = optimize_for_decoding(to_dtype(copy.deepcopy(base), "int4", "cpu")) if kind == "self:int4" else None
    target = optimize_for_decoding(base)
    draft = draft if draft is not None else self_draft(target, 2)
    engine, prompt = Engine(target), torch.tensor([[5, 9, 2, 7, 7, 1, 3, 8]])
    engine.open(1, 64)
    engine.prefill(prompt[:, :-1])
    keys = engine.cache.k[:, :, :, :7].clone()
    widths = []
    hook = draft.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    drafter = ModelDrafter(draft, 64, History(None, 8, None), target=engine)
    config = GenerationConfig(strategy="speculative", temperature=0)
    for gamma in (4, 1, 6):
        drafts, _ = drafter.propose(prompt, gamma, config, True, None)
        assert drafts.shape == (gamma,)
    hook.remove()
    assert widths == [1] * 11 and engine.length == 7
    assert torch.equal(engine.cache.k[:, :, :, :7], keys)


@pytest.mark.slow
def test_self_speculative_sampling_matches_the_target_on_a_tiny_vocabulary():
    target = _model(vocab=6)
    draft = self_draft(target, 1)
    config = GenerationConfig(strategy="speculative", temperature=1.0, max_new_tokens=2, num_draft_tokens=2)
    assert two_token_pvalue(target, [1, 2, 3], config, draft=draft) > 1e-3


def test_self_draft_references_and_refusals():
    assert parse_self_draft("self:12") == 12 and parse_self_draft("runs/draft") is None
    assert parse_self_draft("self:int4", DTYPES) == "int4"
    for spec in ("self:half", "self:²", "self:٣"):  # (digits str.isdigit takes and int() reads otherwise or refuses)
        with pytest.raises(ArlmError, match="self:L"):
            parse_self_draft(spec)
    with pytest.raises(ArlmError, match="self:DTYPE with DTYPE one of float32, bfloat16"):
        parse_self_draft("self:int3", DTYPES)
    with pytest.raises(ArlmError, match="1 to 3"):
        self_draft(_model(), 4)
