"""Samplers: each processor chain's exact distribution, the empirical one (chi-square), and transformers'."""

import numpy as np
import pytest
import torch

from arlm.config import GenerationConfig
from arlm.decoding.processors import (
    History,
    logits_to_probs,
    min_new_tokens,
    no_repeat_ngram,
    process,
    prompt_starts,
    repetition_penalty,
    sample,
)
from tests.helpers import chi_square_pvalue

LOGITS = torch.tensor([[2.0, 1.5, 1.2, 0.9, 0.5, 0.1, -0.3, -0.8, -1.5, -3.0]])
SEQ = torch.tensor([[0, 3, 3, 7]])
CHAINS = {
    "plain": GenerationConfig(),
    "temperature 0.6": GenerationConfig(temperature=0.6),
    "top-k 4": GenerationConfig(top_k=4),
    "top-p 0.8": GenerationConfig(top_p=0.8),
    "min-p 0.2": GenerationConfig(min_p=0.2),
    "temp 1.3, top-k 6, top-p 0.9, min-p 0.05": GenerationConfig(temperature=1.3, top_k=6, top_p=0.9, min_p=0.05),
    "repetition 1.5, top-p 0.95": GenerationConfig(repetition_penalty=1.5, top_p=0.95),
}


def _expected(config: GenerationConfig) -> np.ndarray:
    """The chain computed independently, in float64 with numpy, from the definitions."""
    z = LOGITS[0].double().numpy().copy()
    if config.repetition_penalty != 1.0:
        for t in set(SEQ[0].tolist()):
            z[t] = z[t] * config.repetition_penalty if z[t] < 0 else z[t] / config.repetition_penalty
    z = z / config.temperature
    keep = np.ones_like(z, dtype=bool)
    if config.top_k:
        keep &= z >= np.sort(z)[::-1][config.top_k - 1]
    if config.top_p < 1.0:
        p = np.exp(z - z[keep].max()) * keep
        p /= p.sum()
        order = np.argsort(-p)
        mass_before = np.cumsum(p[order]) - p[order]  # mass of strictly more probable tokens
        keep_sorted = mass_before < config.top_p
        keep &= np.isin(np.arange(len(z)), order[keep_sorted])
    if config.min_p:
        p = np.exp(z - z[keep].max()) * keep
        p /= p.sum()
        keep &= p >= config.min_p * p.max()
    p = np.exp(z - z[keep].max()) * keep
    return p / p.sum()


@pytest.mark.parametrize("name", CHAINS)
def test_chain_probabilities_are_exact(name):
    probs = logits_to_probs(LOGITS, SEQ, CHAINS[name])[0].double().numpy()
    np.testing.assert_allclose(probs, _expected(CHAINS[name]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed,name", list(enumerate(CHAINS)))
def test_samples_follow_the_exact_distribution(seed, name):
    probs = logits_to_probs(LOGITS, SEQ, CHAINS[name])
    generator = torch.Generator().manual_seed(1000 + seed)  # fixed by value, never hash() (PYTHONHASHSEED)
    draws = sample(probs.expand(40_000, -1), generator)
    counts = np.bincount(draws.numpy(), minlength=10)
    expected = _expected(CHAINS[name])
    assert counts[expected == 0].sum() == 0  # filtered tokens are never drawn
    assert chi_square_pvalue(counts, expected) > 1e-3


def test_chi_square_detects_a_wrong_distribution():
    probs = logits_to_probs(LOGITS, SEQ, CHAINS["top-p 0.8"])
    draws = sample(probs.expand(40_000, -1), torch.Generator().manual_seed(0))
    counts = np.bincount(draws.numpy(), minlength=10)
    assert chi_square_pvalue(counts, _expected(CHAINS["plain"])) < 1e-6


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    scores = torch.zeros(1, 10)
    out = no_repeat_ngram(scores, torch.tensor([[1, 2, 3, 1, 2]]), 3)
    assert out[0, 3] == float("-inf") and torch.isfinite(out[0, [0, 1, 2, 4]]).all()
    assert torch.equal(no_repeat_ngram(scores, torch.tensor([[1, 2]]), 3), scores)


@pytest.mark.hf
@pytest.mark.parametrize("name", CHAINS)
def test_same_candidates_and_probabilities_as_transformers(name):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(1)
    logits = torch.randn(6, 500) * 3
    seqs = torch.randint(0, 500, (6, 12))
    config = CHAINS[name]
    chain = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        chain.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        chain.append(TopPLogitsWarper(config.top_p))
    if config.min_p:
        chain.append(MinPLogitsWarper(config.min_p))
    theirs = chain(seqs, logits.clone()).softmax(-1)
    ours = logits_to_probs(logits, seqs, config)
    assert torch.equal(ours > 0, theirs > 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.hf
def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits, seqs = torch.randn(3, 50), torch.randint(0, 50, (3, 9))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(seqs, logits.clone())
    torch.testing.assert_close(repetition_penalty(logits, seqs, 1.3), theirs)


# ---------------------------------------------------------------- left padding is never a seen token

PAD = 7  # the padding id; counting the padding as seen tokens would change every case below


def _padded(real: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """real left-padded by three PADs in a batch with an unpadded row: (2, S) ids and (2,) starts."""
    other = list(range(1, len(real) + 4))
    return torch.tensor([[PAD] * 3 + real, other]), torch.tensor([3, 0])


def test_prompt_starts_from_the_attention_mask():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    assert prompt_starts(mask).tolist() == [2, 0, 1]
    assert prompt_starts(torch.ones(2, 3, dtype=torch.long)) is None and prompt_starts(None) is None


@pytest.mark.parametrize(
    "config,real",
    [
        (GenerationConfig(repetition_penalty=1.5), [3, 5, 3, 5]),
        (GenerationConfig(repetition_penalty=0.7, temperature=0.8, top_k=8), [3, 5, 3, 5]),
        (GenerationConfig(no_repeat_ngram_size=1), [3, 5, 3, 5]),
        (GenerationConfig(no_repeat_ngram_size=2, top_p=0.95), [3, 5, PAD]),  # (PAD, PAD), (PAD, 3) if counted
    ],
    ids=["repetition", "repetition<1 + top-k", "no-repeat 1", "no-repeat 2 + top-p"],
)
def test_every_lookback_processor_sees_only_real_tokens(config, real):
    logits = torch.linspace(2.0, -3.0, 10)[None].repeat(2, 1)  # (2, 10)
    padded, starts = _padded(real)
    alone = logits_to_probs(logits[:1], torch.tensor([real]), config)
    in_batch = logits_to_probs(logits, padded, config, History(starts=starts))
    torch.testing.assert_close(in_batch[:1], alone, rtol=0, atol=0)
    counted = logits_to_probs(logits, padded, config)  # what counting the padding would give: the test can fail
    assert not torch.equal(counted[:1], alone)


def test_min_new_tokens_masks_eos_until_enough_tokens():
    scores = torch.zeros(2, 10)
    assert min_new_tokens(scores, 2, 3, eos_id=4)[:, 4].tolist() == [float("-inf")] * 2
    assert torch.equal(min_new_tokens(scores, 3, 3, eos_id=4), scores)
    assert torch.equal(min_new_tokens(scores, 0, 3, eos_id=None), scores)


@pytest.mark.hf
def test_repetition_penalty_on_a_padded_batch_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    generator = torch.Generator().manual_seed(5)
    logits, seqs = torch.randn(3, 50, generator=generator), torch.randint(0, 50, (3, 9), generator=generator)
    starts = torch.tensor([0, 4, 7])  # what transformers' generate() passes: the padding lengths
    theirs = RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=starts)(seqs, logits.clone())
    torch.testing.assert_close(repetition_penalty(logits, seqs, 1.3, starts), theirs)
    assert not torch.allclose(repetition_penalty(logits, seqs, 1.3), theirs)


@pytest.mark.hf
@pytest.mark.parametrize("generated", [0, 2, 3, 5])
def test_min_new_tokens_matches_transformers(generated):
    from transformers.generation.logits_process import MinNewTokensLengthLogitsProcessor

    prompt_length, logits = 6, torch.randn(2, 20, generator=torch.Generator().manual_seed(9))
    seqs = torch.randint(0, 20, (2, prompt_length + generated), generator=torch.Generator().manual_seed(10))
    theirs = MinNewTokensLengthLogitsProcessor(prompt_length, 3, eos_token_id=11)(seqs, logits.clone())
    config = GenerationConfig(strategy="greedy", min_new_tokens=3)
    ours = process(logits, seqs, config, History(prompt_length=prompt_length, eos_id=11))
    assert torch.equal(ours, theirs)


def test_best_is_argmax_on_ties_nan_and_wide_rows():
    """best (greedy's pick, by max) returns what argmax returns: the first largest, the first NaN, index 0 of a row of
    -inf, across a vocabulary-wide row with many ties, in float32 and bfloat16."""
    from arlm.decoding.processors import best

    rows = torch.tensor([[1.0, 3.0, 3.0, 2.0], [float("nan"), 1.0, float("nan"), 5.0], [float("-inf")] * 4])
    assert best(rows).tolist() == rows.argmax(-1).tolist() == [1, 0, 0]
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        wide = torch.randint(0, 5, (8, 49152), generator=generator).to(dtype)  # ~9,800 ties for the top a row
        assert torch.equal(best(wide), wide.argmax(-1))
        assert torch.equal(best(wide[3]), wide[3].argmax(-1))  # one row (V,) -> a 0-d index
        strided = wide.reshape(8, 2, 24576).transpose(0, 1)  # (2, 8, 24576), not contiguous
        assert torch.equal(best(strided), strided.argmax(-1))
        assert best(wide).dtype == torch.long


def test_tied_scores_go_to_the_lowest_id_as_greedy_breaks_them():
    """bfloat16 logits tie at the top (19.375 twice): beam search's topk took the other one than greedy; its
    selections now break ties as argmax does. top-k keeps every tie, as transformers' does (unbiased sampling)."""
    from arlm.decoding.processors import top_indices, top_k

    scores = torch.tensor([[1.0, 5.0, 2.0, 5.0, 5.0, 0.0], [3.0, 3.0, 3.0, 3.0, 9.0, 3.0]])
    values, ids = top_indices(scores, 2)
    assert ids.tolist() == [[1, 3], [4, 0]] and values.tolist() == [[5.0, 5.0], [9.0, 3.0]]
    assert torch.isfinite(top_k(scores, 1)).sum(-1).tolist() == [3, 1]
    plain = torch.tensor([[0.5, 2.0, 1.0]])
    assert top_indices(plain, 2)[1].tolist() == torch.topk(plain, 2).indices.tolist()  # (no tie: topk's answer)


def test_beam_width_1_is_greedy_where_two_tokens_always_tie():
    """A head whose two rows are equal gives those tokens equal logits at every step."""
    from arlm.config import ModelConfig
    from arlm.decoding.generate import generate
    from arlm.model.transformer import Transformer

    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=40, block_size=64, n_layer=2, n_head=2, d_model=32)
    model = Transformer(config).eval()
    prompt = [[1, 2, 3, 4]]
    first = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=1)).generated()[0][0]
    twin = 0 if first != 0 else 1
    with torch.no_grad():
        model.lm_head.weight[twin] = model.lm_head.weight[first]  # (tied embeddings: the twin's input row too)
    greedy = generate(model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=12)).generated()
    assert greedy[0][0] == min(first, twin)  # the tie, broken by the lowest id
    beam = GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=12, stop_at_eos=False)
    assert generate(model, prompt, beam).generated() == greedy
