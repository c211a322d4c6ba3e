"""The offline replay of prompt lookup's policies counts the rounds, drafts and acceptances real decoding has."""

import pytest
import torch

from arlm.bench.lookup_replay import by_match, fixed, replay
from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding import speculative as spec
from arlm.decoding.drafters import MAX_ADAPTIVE_DRAFT, lookup_ngram
from arlm.decoding.forward_cost import ForwardCost
from arlm.decoding.generate import generate
from arlm.decoding.speculative import AdaptiveGamma
from arlm.model.transformer import Transformer

UNIT_COST = {k: 1.0 for k in range(1, 18)}
DEAR_COST = {k: 1.0 + 0.3 * (k - 1) for k in range(1, 18)}  # verifying k tokens: a price adaptive drafting weighs


def _model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(flavour="llama", vocab_size=12, block_size=128, n_layer=1, n_head=2, d_model=16, init_std=0.5)
    return Transformer(config).eval()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,adaptive", [(1, False), (4, False), (8, False), (4, True)])
def test_replay_matches_real_prompt_lookup(seed, gamma, adaptive, monkeypatch):
    """Adaptive (greedy): the real run's measured times replaced by the cost table the replay is told."""

    class Tabled(ForwardCost):
        def record(self, tokens: int, seconds: float) -> None:
            super().record(tokens, DEAR_COST[tokens])

    monkeypatch.setattr(spec, "ForwardCost", Tabled)
    target, prompt = _model(seed), [1, 2, 3, 4, 1, 2, 3, 5, 6, 1, 2]
    settings = dict(temperature=0, max_new_tokens=48, stop_at_eos=False)
    greedy = generate(target, [prompt], GenerationConfig(strategy="greedy", **settings)).generated()[0]
    config = GenerationConfig(strategy="prompt-lookup", num_draft_tokens=gamma, adaptive_draft=adaptive, **settings)
    real = generate(target, [prompt], config)
    assert real.generated()[0] == greedy
    policy = by_match if adaptive else fixed(gamma)
    max_n = lookup_ngram(config.prompt_lookup_ngram, adaptive)
    rate = AdaptiveGamma(MAX_ADAPTIVE_DRAFT, 0.0, ForwardCost(measure=True)) if adaptive else None
    run = replay(prompt, greedy, policy, max_n, DEAR_COST if adaptive else UNIT_COST, rate)
    assert (run.rounds, run.proposed, run.accepted) == (
        real.stats["target_forwards"],
        real.stats["proposed"],
        real.stats["accepted"],
    )
    assert run.tokens == len(greedy) and (adaptive or run.cost == run.rounds)  # fixed γ: a unit cost per round
    assert run.proposed > 0  # the prompt repeats itself: there was something to draft
