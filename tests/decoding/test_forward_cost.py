"""The price adaptive speculative decoding weighs drafts against: measured where greedy, a fixed model otherwise."""

import pytest
import torch

from arlm.config import GenerationConfig
from arlm.decoding import speculative as spec
from arlm.decoding.forward_cost import VERIFY_FIXED, VERIFY_PER_TOKEN, WINDOW, ForwardCost
from arlm.decoding.generate import generate
from arlm.model.transformer import ModelConfig, Transformer


def test_the_fixed_model_until_measured_and_when_not_measuring():
    for cost in (ForwardCost(measure=True), ForwardCost(measure=False)):
        assert cost.relative(1) == 1.0
        assert cost.relative(5) == pytest.approx(1 + VERIFY_FIXED + 4 * VERIFY_PER_TOKEN)
    ignoring = ForwardCost(measure=False)
    ignoring.record(1, 0.01)
    ignoring.record(5, 0.5)
    assert ignoring.relative(5) == pytest.approx(1 + VERIFY_FIXED + 4 * VERIFY_PER_TOKEN)


def test_measured_medians_and_the_line_to_the_nearest_measured_count():
    cost = ForwardCost(measure=True)
    for seconds in (0.5, 0.010, 0.010, 0.011):  # a slow first call; the median keeps the typical one
        cost.record(1, seconds)
    assert cost.relative(3) == pytest.approx(1 + VERIFY_FIXED + 2 * VERIFY_PER_TOKEN)  # nothing above 1 seen yet
    for seconds in (0.030, 0.029, 0.031):
        cost.record(5, seconds)
    one = (0.010 + 0.011) / 2
    assert cost.relative(5) == pytest.approx(0.030 / one)
    assert cost.relative(3) == pytest.approx(1 + (0.030 / one - 1) * 2 / 4)  # along the line from 1 to 5
    assert cost.relative(9) == pytest.approx(1 + (0.030 / one - 1) * 8 / 4)
    for _ in range(WINDOW):
        cost.record(1, 0.020)  # only the latest WINDOW forwards count
    assert cost.relative(5) == pytest.approx(0.030 / 0.020)


def test_adaptive_gamma_stops_drafting_where_verifying_costs_too_much():
    cheap, dear = ForwardCost(measure=True), ForwardCost(measure=True)
    for k in range(1, 10):
        cheap.record(k, 0.010 * (1 + 0.05 * (k - 1)))  # AMX-like: a 5-token forward ~1.2x one
        dear.record(k, 0.010 * (1 + 0.50 * (k - 1)))  # AVX2 int4-like: ~3x
    for rate, drafts_cheap, drafts_dear in ((0.4, True, False), (0.95, True, True)):
        adaptive = [spec.AdaptiveGamma(8, 0.0, cost, prior=rate) for cost in (cheap, dear)]
        assert (adaptive[0].next() > 0, adaptive[1].next() > 0) == (drafts_cheap, drafts_dear), rate


def test_greedy_adaptive_prompt_lookup_measures_its_rounds_and_stays_exact(monkeypatch):
    """Where greedy, adaptive prompt lookup times every verification and weighs drafts against the measured cost
    (here made dear: it stops drafting); the text is greedy's either way."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(flavour="llama", vocab_size=32, block_size=128, n_layer=2, n_head=2, d_model=32))
    prompt = [[3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5]]
    greedy = generate(model.eval(), prompt, GenerationConfig(strategy="greedy", max_new_tokens=24)).generated()
    config = GenerationConfig(strategy="prompt-lookup", max_new_tokens=24, adaptive_draft=True, temperature=0.0)
    seen = []

    class Dear(ForwardCost):
        def record(self, tokens: int, seconds: float) -> None:
            seen.append((tokens, self.measure))
            super().record(tokens, 0.010 * (1 + 2.0 * (tokens - 1)))  # verifying k tokens costs 2k - 1 steps

    monkeypatch.setattr(spec, "ForwardCost", Dear)
    out = generate(model, prompt, config)
    assert out.generated() == greedy
    assert seen and all(measure for _, measure in seen)
    assert any(tokens > 1 for tokens, _ in seen[:-5])  # it drafted while the price was the fixed model's
    assert all(tokens == 1 for tokens, _ in seen[-5:])  # drafting stopped once the measured price was known
    sampled = GenerationConfig(strategy="prompt-lookup", max_new_tokens=8, adaptive_draft=True, temperature=1.0, seed=0)
    seen.clear()
    generate(model, prompt, sampled)
    assert seen and not any(measure for _, measure in seen)  # sampling: the fixed model, so a seed's draws are fixed


def test_a_drafted_token_priced_by_its_measured_time_once_a_step_was_seen():
    """The draft's share of the weights until both a one-token forward and a draft round after the first (which may
    read the prompt) were timed; then the ratio of the medians; nothing where not measuring."""
    cost = ForwardCost(measure=True)
    assert not cost.priced() and not cost.verified() and cost.draft(0.58) == 0.58
    cost.record_draft(4, 1.0)  # the first round: the prompt's forward in a draft with a cache of its own
    cost.record(1, 0.010)
    assert cost.priced() and cost.draft(0.58) == 0.58
    for tokens, seconds in ((4, 0.030), (2, 0.016), (0, 0.5), (4, 0.032)):  # (a round that drafted nothing: none)
        cost.record_draft(tokens, seconds)
    assert cost.draft(0.58) == pytest.approx(0.008 / 0.010)  # the median of 7.5, 8 and 8 ms a token
    ignoring = ForwardCost(measure=False)
    ignoring.record(1, 0.010)
    for _ in range(3):
        ignoring.record_draft(4, 0.030)
    assert ignoring.priced() and ignoring.draft(0.58) == 0.58


def test_adaptive_gamma_measures_a_step_and_a_verification_first_then_drafts_by_the_measured_price():
    cost = ForwardCost(measure=True)
    adaptive = spec.AdaptiveGamma(8, 0.58, cost, prior=0.9)
    assert adaptive.next() == 0  # unpriced: a plain step, which measures the unit
    cost.record(1, 0.010)
    assert adaptive.next() == spec.PROBE_GAMMA  # then drafting once, which measures a verification
    for k in range(2, 10):
        cost.record(k, 0.010 * (1 + 0.04 * (k - 1)))  # a verification ~1.15x a step (int8 on a Zen 4)
    assert adaptive.next() > 0  # at the weights' share, 0.58, drafting pays at 90% acceptance
    for _ in range(3):
        cost.record_draft(4, 4 * 0.0095)  # measured: a drafted token costs 0.95 of a step
    assert adaptive.next() == 0
