"""Speculative decoding is exact: greedy output equals the target's greedy output for any draft, and sampled
output follows the target's distribution (chi-square), which breaks if the residual is replaced by p."""

import numpy as np
import pytest
import torch

import arlm.decoding.drafters as drafters
import arlm.decoding.speculative as spec
from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.forward_cost import ForwardCost
from arlm.decoding.generate import generate
from arlm.decoding.processors import History
from arlm.errors import ArlmError
from arlm.model.quant import quantize_model
from arlm.model.transformer import Transformer
from tests.helpers import chi_square_pvalue, two_token_pvalue


def _model(seed, vocab=50, layers=2, d=32, flavour="llama", context=128):
    torch.manual_seed(seed)
    config = ModelConfig(
        flavour=flavour, vocab_size=vocab, block_size=context, n_layer=layers, n_head=4, d_model=d, init_std=0.3
    )
    return Transformer(config).eval()


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_greedy_speculative_equals_greedy_for_any_draft(flavour):
    target = _model(0, flavour=flavour)
    prompt = [[1, 2, 3, 4, 5, 6]]
    plain = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=40)).generated()[0]
    drafts = {"random": _model(1, layers=1, d=16, flavour=flavour), "itself": target}
    for name, draft in drafts.items():
        for gamma, adaptive in ((1, False), (4, False), (3, True)):
            config = GenerationConfig(
                strategy="speculative",
                temperature=0,
                max_new_tokens=40,
                num_draft_tokens=gamma,
                adaptive_draft=adaptive,
            )
            out = generate(target, prompt, config, draft=draft)
            assert out.generated()[0] == plain, (name, gamma)
            if name == "itself" and adaptive:  # a draft as costly as the target never pays: adaptive drafts nothing
                assert out.stats["proposed"] == 0 and out.stats["target_forwards"] == len(plain)
            elif name == "itself":
                assert out.stats["acceptance_rate"] == 1.0
                assert out.stats["tokens_per_target_forward"] > gamma * 0.8


def test_prompt_lookup_is_exact_and_finds_repeats():
    target = _model(0)
    plain = generate(target, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=60)).generated()[0]
    prompt = [[1, 2, 3] + plain[:30]]  # the continuation repeats what the prompt already holds
    expected = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=30)).generated()[0]
    out = generate(target, prompt, GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=30))
    assert out.generated()[0] == expected
    assert out.stats["accepted"] > 0


class _Squash(torch.nn.Module):
    """Scores within 1e-8 of each other: a softmax rounds many of them to one probability, their argmax does not."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits - logits.amax(dim=-1, keepdim=True)) * 1e-9


@pytest.mark.parametrize("strategy", ["prompt-lookup", "speculative"])
def test_greedy_verification_takes_the_argmax_greedy_decoding_takes(strategy):
    """Greedy decoding takes the argmax of the scores; a verification that took the argmax of their softmax picked
    the first of the tokens the softmax tied with the best, and wrote another text."""
    target, draft = _model(0), _model(1, layers=1, d=16)
    for model in (target, draft):
        model.lm_head = torch.nn.Sequential(model.lm_head, _Squash())
    logits = target(torch.tensor([[1, 2, 3]]))[0, -1]
    assert logits.softmax(-1).argmax() != logits.argmax()  # the softmax ties the best with an earlier token
    plain = generate(target, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=60)).generated()[0]
    prompt = [[1, 2, 3] + plain[:30]]
    expected = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=30)).generated()[0]
    config = GenerationConfig(strategy=strategy, temperature=0, max_new_tokens=30, num_draft_tokens=4)
    out = generate(target, prompt, config, draft=draft if strategy == "speculative" else None)
    assert out.generated()[0] == expected and out.stats["proposed"] > 0


@pytest.mark.parametrize("strategy", ["greedy", "prompt-lookup", "speculative"])
def test_every_strategy_times_decoding_apart_from_the_same_prompt_forward(strategy):
    """prompt_seconds: the forward over the prompt but its last token (the same one for greedy and speculative
    decoding); decode_tokens_per_s counts the time after it; a one-token prompt has none."""
    target, draft = _model(0), _model(1, layers=1, d=16)
    config = GenerationConfig(strategy=strategy, temperature=0, max_new_tokens=12)
    for prompt in ([[1, 2, 3, 4, 5, 6, 7]], [[1]]):
        stats = generate(target, prompt, config, draft=draft if strategy == "speculative" else None).stats
        assert 0 <= stats["prompt_seconds"] < stats["seconds"]
        assert stats["decode_tokens_per_s"] == pytest.approx(12 / (stats["seconds"] - stats["prompt_seconds"]))
        assert (stats["prompt_seconds"] == 0) == (len(prompt[0]) == 1)


def test_eos_and_marks():
    target = _model(0)
    plain = generate(target, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=30)).generated()[0]
    eos = plain[10]
    out = generate(
        target,
        [[1, 2, 3]],
        GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=30),
        draft=target,
        eos_id=eos,
    )
    assert out.generated()[0] == plain[: plain.index(eos) + 1]
    marks = out.stats["draft_marks"][0]
    assert len(marks) == len(out.generated()[0]) and any(marks)


def _first_tokens_verify(p, q, trials, seed):
    """Emitted tokens of one verification round, drafts drawn from q, over many trials."""
    generator = torch.Generator().manual_seed(seed)
    firsts, seconds = [], []
    for _ in range(trials):
        drafts = torch.stack([torch.multinomial(q[j], 1, generator=generator)[0] for j in range(q.shape[0])])
        accepted, nxt = spec.verify(p, q, drafts, False, generator)
        emitted = drafts[:accepted].tolist() + [nxt]
        firsts.append(emitted[0])
        if len(emitted) > 1:
            seconds.append(emitted[1])
    return np.bincount(firsts, minlength=p.shape[1]), np.bincount(seconds, minlength=p.shape[1])


P = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05, 0.0], [0.05, 0.05, 0.1, 0.2, 0.3, 0.3], [1 / 6] * 6])
Q = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]])


def test_verification_rule_gives_the_target_distribution():
    firsts, seconds = _first_tokens_verify(P, Q, 20_000, seed=0)
    assert chi_square_pvalue(firsts, P[0].numpy()) > 1e-3
    assert chi_square_pvalue(seconds, P[1].numpy()) > 1e-3
    assert firsts[5] == 0  # a token the target never emits is never emitted


def test_the_test_fails_if_the_residual_is_plain_p(monkeypatch):
    monkeypatch.setattr(spec, "residual", lambda p, q: p)
    firsts, _ = _first_tokens_verify(P, Q, 20_000, seed=0)
    assert chi_square_pvalue(firsts, P[0].numpy()) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_end_to_end_sampling_matches_the_target_on_a_tiny_vocabulary(quant):
    """Also for a weight-quantized target: the distribution followed is the quantized model's own (int4 keeps
    the 6-row head in float: the kernel packs outputs by 16)."""
    target, draft = _model(0, vocab=6), _model(5, vocab=6, layers=1, d=16)
    if quant:
        quantize_model(target, quant, head=quant == "int8")
    config = GenerationConfig(strategy="speculative", temperature=1.0, max_new_tokens=2, num_draft_tokens=2)
    assert two_token_pvalue(target, [1, 2, 3], config, draft=draft) > 1e-3


def test_bad_inputs():
    target = _model(0)
    with pytest.raises(ArlmError, match="vocabulary"):
        generate(
            target, [[1, 2]], GenerationConfig(strategy="speculative", max_new_tokens=4), draft=_model(1, vocab=51)
        )
    with pytest.raises(ArlmError, match="one prompt at a time"):
        generate(target, [[1, 2], [3, 4]], GenerationConfig(strategy="speculative", max_new_tokens=4), draft=target)
    with pytest.raises(ArlmError, match="needs a draft"):
        generate(target, [[1, 2]], GenerationConfig(strategy="speculative", max_new_tokens=4))


@pytest.mark.parametrize("strategy,draft_seed", [("speculative", 1), ("speculative", 0), ("prompt-lookup", None)])
def test_min_new_tokens_keeps_greedy_speculative_equal_to_greedy(strategy, draft_seed):
    target = _model(0)
    prompt = [[1, 2, 3, 1, 2, 3]]
    free = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=30)).generated()[0]
    eos = free[2]  # greedy alone would end after three tokens
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=30, min_new_tokens=12)
    expected = generate(target, prompt, greedy, eos_id=eos).generated()[0]
    assert eos not in expected[:12] and len(expected) > 3
    config = GenerationConfig(strategy=strategy, temperature=0, max_new_tokens=30, min_new_tokens=12)
    draft = None if draft_seed is None else (target if draft_seed == 0 else _model(draft_seed, layers=1, d=16))
    assert generate(target, prompt, config, draft=draft, eos_id=eos).generated()[0] == expected


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
@pytest.mark.parametrize(("prompt_len", "temperature"), [(10, 0), (24, 0), (30, 0), (10, 1)])
def test_a_draft_of_a_shorter_context_drafts_within_it_and_then_nothing(flavour, prompt_len, temperature):
    """A draft distilled at context 16 beside a target of 128 (the text crosses the draft's context, or the prompt
    alone is longer): it drafts while the text fits it, then the target decodes alone; the output is the target's
    (it raised 'sequence of N positions exceeds block_size 16' once the text passed the draft's context)."""
    target, draft = _model(0, flavour=flavour), _model(1, layers=1, d=16, flavour=flavour, context=16)
    prompt = [[(7 * i) % 50 for i in range(prompt_len)]]
    common = {"max_new_tokens": 20, "temperature": temperature, "seed": 5}
    plain = generate(target, prompt, GenerationConfig(strategy="greedy" if temperature == 0 else "sample", **common))
    config = GenerationConfig(strategy="speculative", num_draft_tokens=4, **common)
    events = []
    out = generate(target, prompt, config, draft=draft, trace=events.append)
    if temperature == 0:
        assert out.generated() == plain.generated()
    assert len(out.generated()[0]) == 20
    assert all(
        prompt_len + sum(len(e["drafted"][: e["accepted"]]) + 1 for e in events[:j]) + len(e["drafted"]) <= 17
        for j, e in enumerate(events)
        if e["drafted"]
    )  # each round's drafts within the draft's context
    assert (out.stats["proposed"] > 0) == (prompt_len < 16)


def test_trace_reports_every_verification():
    target, draft = _model(0), _model(1, layers=1, d=16)
    config = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=30, num_draft_tokens=3)
    events = []
    out = generate(target, [[1, 2, 3]], config, draft=draft, trace=events.append)
    assert len(events) == out.stats["target_forwards"]
    kept = []
    for e in events:
        assert e["event"] == "verify" and 0 <= e["accepted"] <= len(e["drafted"]) <= 3
        new = e["drafted"][: e["accepted"]] + [e["token"]]
        assert len(e["logprobs"]) == len(new) and all(lp <= 0 for lp in e["logprobs"])
        kept += new
    assert kept[:30] == out.generated()[0]
    assert sum(e["accepted"] for e in events) == out.stats["accepted"]
    assert sum(len(e["drafted"]) for e in events) == out.stats["proposed"]  # rejected drafts count as proposed
    assert out.stats["accepted"] < out.stats["proposed"]  # (the case at hand: some were rejected)
    seq = out.sequences[:, : 3 + len(kept)]  # (1, S): the prompt and every token a verification kept
    with torch.no_grad():
        reference = target(seq[:, :-1]).log_softmax(dim=-1)[0, 2:]  # (len(kept), V): the target's own, from scratch
    tops = [row for e in events for row in e["top"]]
    assert len(tops) == len(kept) and all(len(row) == 20 for row in tops)
    for j, row in enumerate(tops):  # the target's 20 most likely tokens where it verified each kept one
        ids, logprobs = zip(*row)
        best = reference[j].topk(20)
        assert list(ids) == best.indices.tolist() and ids[0] == kept[j]  # greedy keeps the most likely
        assert torch.allclose(torch.tensor(logprobs), best.values, atol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.3, "top_p": 0.5, "seed": 3},
        {"temperature": 2.0, "top_k": 5, "seed": 3},
        {"temperature": 0, "repetition_penalty": 1.5},
    ],
)
def test_trace_probabilities_are_the_models_own_whatever_the_processors(settings):
    """A verification's logprobs and top are the target's own distribution (before temperature, top-k / top-p and the
    repetition penalty), as the batch strategies' and the API's logprobs: the playground showed the processed one
    for speculative decoding beside the raw one for sampling, the same token at 0.15 and 0.88."""
    target, draft = _model(0), _model(1, layers=1, d=16)
    config = GenerationConfig(strategy="speculative", max_new_tokens=16, num_draft_tokens=3, **settings)
    events = []
    out = generate(target, [[1, 2, 3]], config, draft=draft, trace=events.append)
    kept = [t for e in events for t in [*e["drafted"][: e["accepted"]], e["token"]]][:16]
    assert kept == out.generated()[0]
    with torch.no_grad():
        reference = target(out.sequences[:, :-1]).log_softmax(dim=-1)[0, 2:]  # (16, V): the model's own, afresh
    logprobs = [lp for e in events for lp in e["logprobs"]][:16]
    assert torch.allclose(torch.tensor(logprobs), reference[torch.arange(16), torch.tensor(kept)], atol=1e-5)
    for j, row in enumerate([row for e in events for row in e["top"]][:16]):
        assert torch.allclose(torch.tensor([p for _, p in row]), reference[j].topk(len(row)).values, atol=1e-5)


def _brute_force_lookup(ids, max_ngram, gamma):
    """The first prompt-lookup drafter: scan the whole context for the latest earlier match of its tail; the drafts
    and the match's length."""
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start : start + n] == tail:
                return ids[start + n : start + n + gamma], n
    return [], 0


def test_the_ngram_index_drafts_what_a_full_scan_of_the_context_drafts():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (300,), generator=generator).tolist()
    index = drafters.NgramIndex(3)
    for end in range(1, len(ids) + 1):
        index.extend(ids[end - 1 : end])
        for gamma in (1, 4):
            assert index.lookup(gamma) == _brute_force_lookup(ids[:end], 3, gamma), (end, gamma)


def test_prompt_lookup_drafts_from_the_generated_text_too():
    drafter = drafters.PromptLookupDrafter(3)
    config = GenerationConfig(strategy="prompt-lookup", temperature=0)
    prompt = [5, 6, 7]
    seq = torch.tensor([prompt + [1, 2, 3, 9, 8, 1, 2]])  # the prompt, then generated text that repeats itself
    drafts, q = drafter.propose(seq, 4, config, True, None)
    assert drafts.tolist() == [3, 9, 8, 1] and q is None
    seq = torch.cat([seq, torch.tensor([[3, 9]])], dim=1)  # two accepted: the index follows the text as it grows
    assert drafter.propose(seq, 2, config, True, None)[0].tolist() == [8, 1]
    target = _model(0)
    plain = generate(target, [[41, 42, 43]], GenerationConfig(strategy="greedy", max_new_tokens=80)).generated()[0]
    out = generate(target, [[41, 42, 43]], GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=80))
    assert out.generated()[0] == plain and out.stats["accepted"] > 0


def test_adaptive_prompt_lookup_drafts_by_the_length_of_the_match():
    """No drafts after a one-token match, 4 after two tokens, 8 after three, 16 after four; never more than asked."""
    drafter = drafters.PromptLookupDrafter(3, by_match=True)
    config = GenerationConfig(strategy="prompt-lookup", temperature=0, adaptive_draft=True)
    copied = list(range(100, 140))  # a span the text goes on to copy
    for matched, expected in ((1, 0), (2, 4), (3, 8), (4, 16), (5, 16)):
        drafter = drafters.PromptLookupDrafter(3, by_match=True)
        seq = torch.tensor([[7, 8, *copied, 9, *copied[:matched]]])  # the last `matched` tokens repeat the span
        drafts, _ = drafter.propose(seq, 16, config, True, None)
        assert drafts.tolist() == copied[matched : matched + expected], matched
    assert drafter.propose(seq, 3, config, True, None)[0].tolist() == copied[5:8]  # at most gamma


def test_adaptive_gamma_stops_drafting_when_acceptance_falls_and_tries_again_later():
    adaptive = spec.AdaptiveGamma(max_gamma=8, draft_cost=0.0)
    assert adaptive.next() > 0  # the prior: worth drafting
    for _ in range(10):
        adaptive.update(proposed=adaptive.next() or 1, accepted=0)
    assert adaptive.next() == 0  # nothing accepted: plain one-token steps
    rounds = 0
    while adaptive.next() == 0:
        adaptive.update(proposed=0, accepted=0)
        rounds += 1
    assert 1 < rounds < 100  # drafting is probed again after a while
    for _ in range(20):
        adaptive.update(proposed=8, accepted=8)
    assert adaptive.next() == 8  # everything accepted: the longest drafts
    assert spec.AdaptiveGamma(max_gamma=8, draft_cost=1.0).next() == 0  # a draft as costly as the target never pays


@pytest.mark.slow
def test_adaptive_prompt_lookup_sampling_matches_the_target_on_a_tiny_vocabulary():
    target = _model(0, vocab=6)
    config = GenerationConfig(strategy="prompt-lookup", temperature=1.0, max_new_tokens=2, adaptive_draft=True)
    assert two_token_pvalue(target, [1, 2, 3, 1, 2], config) > 1e-3


@pytest.mark.parametrize("adaptive", [False, True])
def test_every_gamma_from_1_to_8_gives_the_greedy_output(adaptive):
    target, draft = _model(0), _model(1, layers=1, d=16)
    prompt = [[1, 2, 3, 4, 1, 2, 3]]
    plain = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=24)).generated()[0]
    for gamma in range(1, 9):
        for strategy, first in (("speculative", False), ("speculative", True), ("prompt-lookup", False)):
            config = GenerationConfig(
                strategy=strategy,
                temperature=0,
                max_new_tokens=24,
                num_draft_tokens=gamma,
                adaptive_draft=adaptive,
                lookup_first=first,
            )
            assert generate(target, prompt, config, draft=draft).generated()[0] == plain, (strategy, first, gamma)


def test_a_greedy_draft_stops_at_eos_and_the_output_stays_exact():
    """Where decoding stops at EOS, a draft model drafts nothing past its EOS (the target would end the text there,
    or reject the rest with it)."""
    target = _model(0)
    prompt = [[1, 2, 3, 4, 5, 6]]
    free = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=12, stop_at_eos=False))
    eos = free.generated()[0][3]  # the target's 4th token: a text that ends there
    seq = torch.tensor(prompt)
    config = GenerationConfig(strategy="speculative", temperature=0)
    drafter = drafters.ModelDrafter(target, 64, History(None, seq.shape[1], eos))
    drafts, _ = drafter.propose(seq, 8, config, True, None)
    assert drafts.tolist() == free.generated()[0][:4]  # the target drafting for itself, cut after its EOS
    drafter.close()
    plain = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=12), eos_id=eos)
    config = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=12, num_draft_tokens=8)
    out = generate(target, prompt, config, eos_id=eos, draft=target)
    assert out.generated() == plain.generated() and out.stats["proposed"] == 4


def test_the_stats_count_only_the_drafts_the_output_holds_where_a_stop_ends_it():
    """A round cut by a stop check counted all its drafts as accepted: 10 of 10 accepted for 3 tokens kept. Now
    what was drafted and accepted counts the tokens the output holds."""
    target = _model(0)
    prompt = [[1, 2, 3, 4, 5, 6]]
    free = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=12, stop_at_eos=False))
    ended = free.generated()[0][:3]
    stop = lambda row, ids: ids[: len(ended)] == ended  # (the text ends after its 3rd token)
    config = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=12, num_draft_tokens=8)
    out = generate(target, prompt, config, draft=target, should_stop=stop)  # (the target drafting for itself)
    assert out.generated()[0] == ended
    assert out.stats["target_forwards"] == 1  # one round: 8 drafts, all the target's own, cut after the 3rd
    assert out.stats["proposed"] == out.stats["accepted"] == 3  # (it said 8 of 8)


def test_lookup_first_copies_where_the_context_recurs_and_asks_the_model_elsewhere():
    """speculative with lookup_first: prompt lookup's tokens (by the match's length) where the context's last 2+
    tokens recur, the draft model's (as the model alone drafts them) where they do not."""
    draft = _model(1, layers=1, d=16)
    config = GenerationConfig(strategy="speculative", temperature=0, lookup_first=True)
    copied = list(range(20, 40))
    for seq, matched in ((torch.tensor([[7, *copied, 9, *copied[:3]]]), 3), (torch.tensor([[7, 8, 9, 7]]), 1)):
        history = History(None, seq.shape[1], None)
        model = drafters.ModelDrafter(draft, 64, history)
        both = drafters.LookupThenModel(model, drafters.PromptLookupDrafter(3, by_match=True), 16, 64)
        drafts, q = both.propose(seq, 4, config, True, None)
        if matched >= drafters.LOOKUP_MATCH_MIN:
            assert both.source == "lookup" and q is None
            assert drafts.tolist() == copied[3 : 3 + drafters.lookup_gamma(3)]  # 8 tokens, more than the model's 4
        else:
            alone = drafters.ModelDrafter(draft, 64, history).propose(seq, 4, config, True, None)[0]
            assert both.source == "model" and drafts.tolist() == alone.tolist()


@pytest.mark.parametrize("adaptive", [False, True])
def test_lookup_first_traces_both_sources_and_adaptive_gamma_learns_from_the_models_rounds_only(adaptive):
    target, draft = _model(0), _model(1, layers=1, d=16)
    plain = generate(target, [[1, 2, 3]], GenerationConfig(strategy="greedy", max_new_tokens=60)).generated()[0]
    prompt = [[1, 2, 3, *plain[:20], 4, 5]]  # a copy to be made later, and new text first
    expected = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=40)).generated()[0]
    config = GenerationConfig(
        strategy="speculative", temperature=0, max_new_tokens=40, lookup_first=True, adaptive_draft=adaptive
    )
    learned = []
    real_update = spec.AdaptiveGamma.update
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec.AdaptiveGamma, "update", lambda self, p, a: learned.append(p) or real_update(self, p, a))
        events = []
        out = generate(target, prompt, config, draft=draft, trace=events.append)
    assert out.generated()[0] == expected
    rounds = [e for e in events if e["event"] == "verify"]
    assert {e["source"] for e in rounds} == {"lookup", "model"}
    model_rounds = [len(e["drafted"]) for e in rounds if e["source"] == "model"]
    assert learned == (model_rounds if adaptive else [])


def test_lookup_first_is_refused_without_a_draft_model_strategy():
    for strategy in ("greedy", "prompt-lookup"):
        with pytest.raises(ArlmError, match="lookup_first goes with the speculative strategy"):
            GenerationConfig(strategy=strategy, lookup_first=True).validate()


@pytest.mark.slow
def test_lookup_first_sampling_matches_the_target_on_a_tiny_vocabulary():
    """Rounds drafted by lookup (certain tokens, q one-hot) and by the model (q its distribution) in one text: each
    round's acceptance uses its own q, so the text keeps the target's distribution."""
    target, draft = _model(0, vocab=6), _model(1, vocab=6, layers=1, d=16)
    config = GenerationConfig(strategy="speculative", temperature=1.0, max_new_tokens=2, lookup_first=True)
    assert two_token_pvalue(target, [1, 2, 3, 1, 2], config, draft=draft) > 1e-3


@pytest.mark.parametrize("strategy", ["speculative", "prompt-lookup"])
def test_a_batch_is_refused_naming_the_strategy_asked_for(strategy):
    target = _model(0)
    config = GenerationConfig(strategy=strategy, max_new_tokens=4, temperature=0.0)
    with pytest.raises(ArlmError, match=f"^{strategy} takes one prompt at a time$"):
        generate(target, [[1, 2], [3, 4]], config, draft=target if strategy == "speculative" else None)


@pytest.mark.parametrize("per_token, drafting", [(0.002, True), (0.012, False)])
def test_greedy_adaptive_speculation_prices_the_draft_by_its_measured_time_and_stays_exact(
    monkeypatch, per_token, drafting
):
    """Where greedy, adaptive speculative decoding times its draft's rounds: a drafted token measured at 0.2 of a
    step keeps it drafting, at 1.2 it stops (its share of the weights, made 0.3 here, would keep it drafting); the
    first round is a plain step, the unit of the prices; the text is greedy's."""
    target = _model(0)
    draft = _model(0)  # the target's own weights: every draft accepted, so only the price can stop it
    prompt = [[1, 2, 3, 4, 5, 6]]
    expected = generate(target, prompt, GenerationConfig(strategy="greedy", max_new_tokens=60)).generated()[0]
    config = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=60, adaptive_draft=True)
    rounds = []

    class Timed(ForwardCost):
        def record(self, tokens: int, seconds: float) -> None:
            rounds.append(tokens - 1)
            super().record(tokens, 0.010 * (1 + 0.05 * (tokens - 1)))  # verifying is cheap

        def record_draft(self, tokens: int, seconds: float) -> None:
            super().record_draft(tokens, per_token * tokens)

    monkeypatch.setattr(spec, "ForwardCost", Timed)
    monkeypatch.setattr(spec, "draft_cost", lambda target, draft, config: 0.3)
    out = generate(target, prompt, config, draft=draft)
    assert out.generated()[0] == expected
    assert rounds[0] == 0 and all(rounds[1:3])  # a plain step, then drafting at the weights' share
    assert any(rounds[-3:]) == drafting  # then as the measured price says
