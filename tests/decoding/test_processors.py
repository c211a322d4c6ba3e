"""Samplers: each processor chain's exact distribution, the empirical one (chi-square), and transformers'."""

import numpy as np
import pytest
import torch

from arlm.config import GenerationConfig
from arlm.decoding.processors import logits_to_probs, no_repeat_ngram, repetition_penalty, sample
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
