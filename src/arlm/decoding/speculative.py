"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a drafter proposes gamma tokens, the target
scores them all in one forward, each is accepted with probability min(1, p/q), the first rejection is resampled
from norm(max(0, p - q)), and a bonus token is drawn when every draft is accepted. The output has exactly the
target's distribution (or, greedy, exactly the target's greedy text). Caches are rolled back by position."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from arlm.config import GenerationConfig
from arlm.decoding.drafters import MAX_ADAPTIVE_DRAFT, Drafter, make_drafter
from arlm.decoding.engine import Engine, cache_dtype
from arlm.decoding.forward_cost import ForwardCost
from arlm.decoding.processors import History, best, make_generator, process
from arlm.decoding.types import (
    MAX_TOP,
    GenerationOutput,
    StopCheck,
    TokenCallback,
    TraceCallback,
    decoding_rate,
    stop_tail,
)
from arlm.errors import ArlmError

RATE_WEIGHT = 0.2  # weight of each new observation in the running acceptance estimate
RECOVERY = 0.05  # how fast the estimate drifts back to its prior while nothing is drafted
LOOKUP_PRIOR = 0.6  # acceptance assumed by adaptive prompt lookup before it has drafted
# and by a draft model: drafting is how its acceptance is learned, and at 0.6 a cheap draft that agrees with the
# target on nearly every token (the target's own weights in int4) never started
DRAFT_PRIOR = 0.9
PROBE_GAMMA = 4  # drafted once where prices are measured, to measure a verification's


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution to resample from after a rejection: norm(max(0, p - q)) (p itself if that is empty)."""
    diff = (p - q).clamp(min=0)
    total = diff.sum()
    return diff / total if total > 0 else p


def verify(
    p: torch.Tensor, q: torch.Tensor | None, drafts: torch.Tensor, greedy: bool, generator: torch.Generator | None
) -> tuple[int, int]:
    """Accept a prefix of drafts (g,) given target probs p (g+1, V) (greedy: any scores, whose argmax is taken) and
    draft probs q (g, V) (None: the drafts were certain, q one-hot). Returns (accepted count, next token: the
    resampled or bonus token)."""
    g = drafts.numel()
    if greedy:  # accept while a draft is the target's argmax; then the target's own token
        chosen, drafted = best(p).tolist(), drafts.tolist()
        accepted = next((j for j in range(g) if drafted[j] != chosen[j]), g)
        return accepted, chosen[accepted]
    for j in range(g):
        d = int(drafts[j])
        q_d = 1.0 if q is None else float(q[j, d])
        u = float(torch.rand((), generator=generator, device=p.device))
        if u * q_d < float(p[j, d]):  # u < p/q without dividing by a zero q
            continue
        q_row = torch.nn.functional.one_hot(drafts[j], p.shape[-1]).to(p.dtype) if q is None else q[j]
        return j, int(torch.multinomial(residual(p[j], q_row), 1, generator=generator))
    return g, int(torch.multinomial(p[g], 1, generator=generator))


class AdaptiveGamma:
    """How many tokens to draft next: the gamma (0..max_gamma) with the most expected tokens per unit of cost, from a
    running estimate `rate` of the chance that a drafted token is accepted. With acceptance a, a round that drafts g
    tokens yields (1 - a^(g+1)) / (1 - a) tokens and costs, in one-token target forwards, the forward over 1 + g
    tokens plus g drafted tokens at draft_cost each (both measured where decoding is greedy, `cost`:
    decoding/forward_cost.py); so when acceptance falls, or verifying costs much more than a step, gamma shrinks to
    0 (plain one-token steps, as greedy decoding takes), and while not drafting the estimate drifts back to its
    prior, so drafting is tried again now and then. Only how many tokens are drafted changes: verification, and so
    the output, stays exact."""

    def __init__(
        self, max_gamma: int, draft_cost: float, cost: ForwardCost | None = None, prior: float = LOOKUP_PRIOR
    ) -> None:
        self.max_gamma, self.draft_cost = max_gamma, draft_cost
        self.cost = cost if cost is not None else ForwardCost(measure=False)
        self.prior = self.rate = prior

    def next(self) -> int:
        """The gamma to draft next (0 unless some gamma is expected to beat a plain step). Where prices are measured,
        the first round is a plain step (their unit), and the next drafts PROBE_GAMMA tokens where drafting could pay
        at all (a verification's price: the fixed model's, far from most machines', would otherwise decide whether one
        is ever measured)."""
        if not self.cost.priced():
            return 0
        a, drafted = min(self.rate, 0.999), self.cost.draft(self.draft_cost)
        if not self.cost.verified():  # could drafting pay at all, were a verification as cheap as a step?
            could_pay = self._best(a, lambda g: 1.0 + drafted * g)[1] > 1.0 + 1e-9
            return min(PROBE_GAMMA, self.max_gamma) if could_pay else 0
        gamma, value = self._best(a, lambda g: self.cost.relative(g + 1) + drafted * g)
        return gamma if value > 1.0 + 1e-9 else 0

    def _best(self, a: float, price: Callable[[int], float]) -> tuple[int, float]:
        """The gamma with the most expected tokens per unit of price(gamma) at acceptance a, and that many."""
        value = [1.0] + [(1 - a ** (g + 1)) / (1 - a) / price(g) for g in range(1, self.max_gamma + 1)]
        gamma = max(range(self.max_gamma + 1), key=lambda g: value[g])
        return gamma, value[gamma]

    def update(self, proposed: int, accepted: int) -> None:
        """Learn from a round: each accepted draft counts as a success, the rejected one (if any) as a failure."""
        if proposed == 0:
            self.rate += RECOVERY * (self.prior - self.rate)
            return
        for success in [1.0] * accepted + [0.0] * (accepted < proposed):
            self.rate += RATE_WEIGHT * (success - self.rate)


@torch.inference_mode()
def speculative_generate(
    engine: Engine,
    prompt_ids: torch.Tensor,
    config: GenerationConfig,
    *,
    draft: torch.nn.Module | None,
    attention_mask: torch.Tensor | None,
    history: History,
    on_token: TokenCallback | None = None,
    should_stop: StopCheck | None = None,
    trace: TraceCallback | None = None,
) -> GenerationOutput:
    """Decode one prompt (1, T) by speculative decoding (config.strategy 'speculative' or 'prompt-lookup') on the
    target's engine; trace gets each verification: the drafted ids, how many were accepted, the target's own next
    token, and the target's log-probability of each token kept (and its likeliest). config.adaptive_draft picks gamma
    each round (a draft model: AdaptiveGamma; prompt lookup: the match's length, `lookup_gamma`, and where greedy also
    AdaptiveGamma on the measured cost of a verification), else it is config.num_draft_tokens."""
    target = engine.model
    _check_inputs(target, draft, prompt_ids, attention_mask, config)
    T = prompt_ids.shape[1]
    max_len = T + config.max_new_tokens
    greedy = config.temperature == 0  # greedy speculative decoding: accept while draft == target argmax
    generator = make_generator(config.seed, prompt_ids.device)
    top = max(config.num_draft_tokens, MAX_ADAPTIVE_DRAFT if config.adaptive_draft else 0)
    drafter = make_drafter(draft, max_len, top, config, history, engine)
    cost = ForwardCost(measure=greedy)  # measured only where the number drafted cannot change the output
    adaptive = _adaptive(config, target, draft, top, cost, greedy)
    sized = "model" if config.strategy == "speculative" else "lookup"  # the drafter whose rounds adaptive sizes
    engine.open(1, max_len + top + 1, dtype=cache_dtype(config.kv_dtype), prompt=prompt_ids)
    start, prompt_s = time.perf_counter(), 0.0
    if engine.length < T - 1:  # (the beginning the engine kept, if any, is not encoded again)
        engine.prefill(prompt_ids[:, engine.length : -1])  # the last prompt token is the first one verified
        prompt_s = time.perf_counter() - start
    seq, marks, stats = prompt_ids, [], {"proposed": 0, "accepted": 0, "target_forwards": 0}
    try:
        while seq.shape[1] < max_len:
            gamma = adaptive.next() if adaptive is not None else top
            room = max_len - seq.shape[1]
            drafts, q = _timed_propose(drafter, cost, seq, min(gamma, room - 1), config, greedy, generator)
            began = time.perf_counter()
            accepted, new, logits = _round(engine, seq, drafts, q, config, greedy, generator, history)
            cost.record(1 + len(drafts), time.perf_counter() - began)
            if trace is not None:
                trace(_verify_event(drafts, accepted, int(new[-1]), logits.log_softmax(dim=-1), new, drafter.source))
            if adaptive is not None and drafter.source == sized:  # (lookup's rounds are sized by the match)
                adaptive.update(len(drafts), accepted)
            drafter.rollback(seq.shape[1] + accepted)
            before = seq.shape[1]
            seq, done = _append(seq, new, history.eos_id, should_stop, T, on_token)
            kept = seq.shape[1] - before  # (fewer than new where an EOS or a stop string ended the text)
            stats["target_forwards"] += 1
            cut = kept < len(new)  # the text ended inside the round: its drafts past the end are no part of it
            stats["proposed"] += min(len(drafts), kept) if cut else len(drafts)
            stats["accepted"] += min(accepted, kept)
            marks += ([True] * accepted + [False])[:kept]
            if done:
                break
    finally:
        drafter.close()
    return _output(seq[:, :max_len], T, marks, stats, time.perf_counter() - start, prompt_s)


def _timed_propose(
    drafter: Drafter,
    cost: ForwardCost,
    seq: torch.Tensor,
    gamma: int,
    config: GenerationConfig,
    greedy: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The drafter's proposal (drafts (g,), q (g, V) or None), a draft model's timed for the price adaptive γ weighs."""
    began = time.perf_counter()
    drafts, q = drafter.propose(seq, gamma, config, greedy, generator)
    if drafter.source == "model":
        cost.record_draft(len(drafts), time.perf_counter() - began)
    return drafts, q


def _adaptive(
    config: GenerationConfig,
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    top: int,
    cost: ForwardCost,
    greedy: bool,
) -> AdaptiveGamma | None:
    """AdaptiveGamma where it sizes the drafts: a draft model's by cost, prompt lookup's where greedy (else lookup
    drafts by the match's length alone), None without config.adaptive_draft."""
    if not config.adaptive_draft or not (config.strategy == "speculative" or greedy):
        return None
    prior = DRAFT_PRIOR if config.strategy == "speculative" else LOOKUP_PRIOR
    return AdaptiveGamma(top, draft_cost(target, draft, config), cost, prior)


def _round(
    engine: Engine,
    seq: torch.Tensor,
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    config: GenerationConfig,
    greedy: bool,
    generator: torch.Generator | None,
    history: History,
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One verification: the target scores seq's last token and the drafts (g,) in one forward; how many drafts
    it accepts, the tokens kept (accepted drafts, then its own next token) and its logits (1+g, V), the model's own
    (before any processor: what a trace shows, as the API's logprobs).
    Greedy takes the argmax of the scores, as greedy decoding does (no softmax, which can tie two nearly equal
    scores); sampling their softmax."""
    block = torch.cat([seq[:, -1:], drafts[None]], dim=1)  # (1, 1+g): last token, then the drafts
    logits = engine.verify(block)[0].float()  # (1+g, V)
    contexts = [torch.cat([seq, drafts[None, :j]], dim=1) for j in range(len(drafts) + 1)]
    scores = torch.cat([process(logits[j : j + 1], c, config, history) for j, c in enumerate(contexts)])  # (1+g, V)
    accepted, nxt = verify(scores if greedy else scores.softmax(dim=-1), q, drafts, greedy, generator)
    engine.rollback(seq.shape[1] + accepted)  # keep the last token and the accepted drafts
    return accepted, torch.cat([drafts[:accepted], torch.tensor([nxt], device=seq.device)]), logits


def draft_cost(target: torch.nn.Module, draft: torch.nn.Module | None, config: GenerationConfig) -> float:
    """Cost of drafting one token in one-token target forwards: 0 for prompt lookup, else the draft's share of the
    target's weights (each weight is read once a token; shared weights, as a self-draft's, count for both)."""
    if config.strategy == "prompt-lookup" or draft is None:
        return 0.0
    return _weights(draft) / _weights(target)


def _weights(model: torch.nn.Module) -> int:
    """Bytes of weights a forward over one token reads: every parameter and buffer once (tied or shared ones once;
    buffers too, since a model laid out for decoding or quantized holds its weights in buffers), an embedding table
    only where the head reads it as well (tied), since a token reads one row of it."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def _check_inputs(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
) -> None:
    """Refuse a batch, a padded prompt, and (for 'speculative') a missing draft or one with another vocabulary."""
    if prompt_ids.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
        raise ArlmError(f"{config.strategy} takes one prompt at a time")
    if config.strategy == "speculative":
        if draft is None:
            raise ArlmError("speculative decoding needs a draft model")
        if draft.config.vocab_size != target.config.vocab_size:
            raise ArlmError(
                f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                f"({target.config.vocab_size}); they must share a tokenizer"
            )


def _verify_event(
    drafts: torch.Tensor, accepted: int, token: int, own: torch.Tensor, kept: torch.Tensor, source: str
) -> dict:
    """A trace event of one verification: drafted ids and what drafted them ("model" or "lookup"), how many were
    accepted, the target's own next token, the target's log-probability (own: (1+g, V), the model's own, before any
    processor) of each token kept, and its MAX_TOP most likely tokens there as (id, log-probability), most likely
    first."""
    best, ids = own[: len(kept)].topk(min(MAX_TOP, own.shape[-1]), dim=-1)  # (kept, MAX_TOP) each
    return {
        "event": "verify",
        "source": source,
        "drafted": drafts.tolist(),
        "accepted": accepted,
        "token": token,
        "logprobs": [float(own[j, t]) for j, t in enumerate(kept.tolist())],
        "top": [list(zip(row_ids, row)) for row_ids, row in zip(ids.tolist(), best.tolist())],
    }


def _append(
    seq: torch.Tensor,
    new: torch.Tensor,
    eos_id: int | None,
    should_stop: StopCheck | None,
    T: int,
    on_token: TokenCallback | None,
) -> tuple[torch.Tensor, bool]:
    """Append tokens one by one, stopping after an EOS or a stop check."""
    for token in new:
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
        if on_token is not None:
            on_token(token.view(1))
        if eos_id is not None and int(token) == eos_id:
            return seq, True
        if should_stop is not None and should_stop(0, stop_tail(should_stop, seq[0, T:]).tolist()):
            return seq, True
    return seq, False


def _output(
    seq: torch.Tensor, T: int, marks: list[bool], stats: dict, seconds: float, prompt_s: float
) -> GenerationOutput:
    """The output with its stats: tokens, timing (`decoding_rate` too), acceptance and which tokens were drafts."""
    new_tokens = seq.shape[1] - T
    proposed = max(stats["proposed"], 1)
    forwards = max(stats["target_forwards"], 1)
    stats.update(
        new_tokens=new_tokens,
        seconds=seconds,
        tokens_per_s=new_tokens / max(seconds, 1e-9),
        **decoding_rate(new_tokens, seconds, prompt_s),
        lengths=[new_tokens],
        acceptance_rate=stats["accepted"] / proposed,
        tokens_per_target_forward=new_tokens / forwards,
        draft_marks=[marks[:new_tokens]],
    )
    return GenerationOutput(seq, None, stats, T)
