"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a drafter proposes gamma tokens, the target
scores them all in one forward, each is accepted with probability min(1, p/q), the first rejection is resampled
from norm(max(0, p - q)), and a bonus token is drawn when every draft is accepted. The output has exactly the
target's distribution (or, greedy, exactly the target's greedy text). Caches are rolled back by position."""

from __future__ import annotations

import time

import torch

from arlm.config import GenerationConfig
from arlm.decoding.processors import History, logits_to_probs, make_generator, process
from arlm.decoding.types import GenerationOutput, StopCheck, TokenCallback, TraceCallback
from arlm.errors import ArlmError

MAX_ADAPTIVE_DRAFT = 16


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution to resample from after a rejection: norm(max(0, p - q)) (p itself if that is empty)."""
    diff = (p - q).clamp(min=0)
    total = diff.sum()
    return diff / total if total > 0 else p


def verify(
    p: torch.Tensor, q: torch.Tensor | None, drafts: torch.Tensor, greedy: bool, generator: torch.Generator | None
) -> tuple[int, int]:
    """Accept a prefix of drafts (g,) given target probs p (g+1, V) and draft probs q (g, V) (None: the drafts
    were certain, q one-hot). Returns (accepted count, next token: the resampled or bonus token)."""
    g = drafts.numel()
    for j in range(g):
        d = int(drafts[j])
        if greedy:
            best = int(p[j].argmax())
            if d != best:
                return j, best
            continue
        q_d = 1.0 if q is None else float(q[j, d])
        u = float(torch.rand((), generator=generator, device=p.device))
        if u * q_d < float(p[j, d]):  # u < p/q without dividing by a zero q
            continue
        q_row = torch.nn.functional.one_hot(drafts[j], p.shape[-1]).to(p.dtype) if q is None else q[j]
        return j, int(torch.multinomial(residual(p[j], q_row), 1, generator=generator))
    last = p[g]
    return g, int(last.argmax()) if greedy else int(torch.multinomial(last, 1, generator=generator))


class ModelDrafter:
    """A small model on the same vocabulary proposes tokens from its own KV cache."""

    def __init__(self, model: torch.nn.Module, max_len: int, history: History) -> None:
        self.model = model
        self.cache = model.new_cache(1, max_len)
        self.history = history

    def propose(
        self, seq: torch.Tensor, gamma: int, config: GenerationConfig, greedy: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """gamma draft tokens continuing seq (1, S), and the draft distribution q each was drawn from."""
        if gamma == 0:
            return seq.new_zeros(0), None
        pending = seq[:, self.cache.length :]  # tokens the draft has not seen yet (1 or 2)
        tokens, probs = [], []
        for _ in range(gamma):
            logits = self.model(pending, kv_cache=self.cache, num_logits=1)[:, -1]  # (1, V)
            context = torch.cat([seq] + [t.view(1, 1) for t in tokens], dim=1)
            if greedy:
                token = process(logits.float(), context, config, self.history).argmax(dim=-1)[0]
            else:
                q = logits_to_probs(logits, context, config, self.history)[0]  # (V,)
                token = torch.multinomial(q, 1, generator=generator)[0]
                probs.append(q)
            tokens.append(token)
            pending = token.view(1, 1)
        return torch.stack(tokens), (torch.stack(probs) if probs else None)

    def rollback(self, length: int) -> None:
        """Forget cached positions from `length` on."""
        self.cache.rollback(min(length, self.cache.length))


class PromptLookupDrafter:
    """Draft-free: copy what followed the latest earlier occurrence of the context's last n-gram."""

    def __init__(self, max_ngram: int) -> None:
        self.max_ngram = max_ngram

    def propose(
        self, seq: torch.Tensor, gamma: int, config: GenerationConfig, greedy: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, None]:
        """Up to gamma tokens (possibly none), proposed with certainty (q one-hot)."""
        ids = seq[0].tolist()
        for n in range(min(self.max_ngram, len(ids) - 1), 0, -1):
            tail = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start : start + n] == tail:
                    follow = ids[start + n : start + n + gamma]
                    return torch.tensor(follow, dtype=torch.long, device=seq.device), None
        return torch.zeros(0, dtype=torch.long, device=seq.device), None

    def rollback(self, length: int) -> None:
        """Nothing cached."""


@torch.inference_mode()
def speculative_generate(
    target: torch.nn.Module,
    prompt_ids: torch.Tensor,
    config: GenerationConfig,
    *,
    draft: torch.nn.Module | None,
    attention_mask: torch.Tensor | None,
    history: History,
    pad_id: int,
    on_token: TokenCallback | None = None,
    should_stop: StopCheck | None = None,
    trace: TraceCallback | None = None,
) -> GenerationOutput:
    """Decode one prompt (1, T) by speculative decoding (config.strategy 'speculative' or 'prompt-lookup'); trace
    gets each verification: the drafted ids, how many were accepted, the target's own next token, and the target's
    probability of each token kept."""
    _check_inputs(target, draft, prompt_ids, attention_mask, config)
    T, eos_id = prompt_ids.shape[1], history.eos_id
    max_len = T + config.max_new_tokens
    greedy = config.temperature == 0  # greedy speculative decoding: accept while draft == target argmax
    generator = make_generator(config.seed, prompt_ids.device)
    drafter = _drafter(draft, max_len + config.num_draft_tokens + 1, config, history)
    cache = target.new_cache(1, max_len + config.num_draft_tokens + 1)
    start = time.perf_counter()
    if T > 1:
        target(prompt_ids[:, :-1], kv_cache=cache)  # the last prompt token is the first one verified
    seq, marks, stats = prompt_ids, [], {"proposed": 0, "accepted": 0, "target_forwards": 0}
    gamma = config.num_draft_tokens
    while seq.shape[1] < max_len:
        room = max_len - seq.shape[1]
        drafts, q = drafter.propose(seq, min(gamma, room - 1) if room > 1 else 0, config, greedy, generator)
        block = torch.cat([seq[:, -1:], drafts[None]], dim=1)  # (1, 1+g): last token, then the drafts
        logits = target(block, kv_cache=cache)[0]  # (1+g, V)
        stats["target_forwards"] += 1
        contexts = [torch.cat([seq, drafts[None, :j]], dim=1) for j in range(len(drafts) + 1)]
        p = torch.stack([logits_to_probs(logits[j : j + 1], c, config, history)[0] for j, c in enumerate(contexts)])
        accepted, nxt = verify(p, q, drafts, greedy, generator)
        new = torch.cat([drafts[:accepted], torch.tensor([nxt], device=seq.device)])
        if trace is not None:
            trace(_verify_event(drafts, accepted, nxt, p, new))
        stats["proposed"] += len(drafts)
        stats["accepted"] += accepted
        marks += [True] * accepted + [False]
        cache.rollback(seq.shape[1] + accepted)  # keep the last token and the accepted drafts
        drafter.rollback(seq.shape[1] + accepted)
        seq, done = _append(seq, new, eos_id, should_stop, T, on_token)
        if config.adaptive_draft:
            gamma = min(gamma + 2, MAX_ADAPTIVE_DRAFT) if accepted == len(drafts) else max(1, gamma - 1)
        if done:
            break
    seq = seq[:, :max_len]
    return _output(seq, T, marks, stats, time.perf_counter() - start)


def _check_inputs(
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
) -> None:
    """Refuse a batch, a padded prompt, and (for 'speculative') a missing draft or one with another vocabulary."""
    if prompt_ids.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
        raise ArlmError("speculative decoding takes one prompt at a time")
    if config.strategy == "speculative":
        if draft is None:
            raise ArlmError("speculative decoding needs a draft model")
        if draft.config.vocab_size != target.config.vocab_size:
            raise ArlmError(
                f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                f"({target.config.vocab_size}); they must share a tokenizer"
            )


def _drafter(
    draft: torch.nn.Module | None, max_len: int, config: GenerationConfig, history: History
) -> ModelDrafter | PromptLookupDrafter:
    """The draft model's drafter ('speculative') or n-gram lookup in the context ('prompt-lookup')."""
    if config.strategy == "speculative":
        return ModelDrafter(draft, max_len, history)
    return PromptLookupDrafter(config.prompt_lookup_ngram)


def _verify_event(drafts: torch.Tensor, accepted: int, token: int, p: torch.Tensor, kept: torch.Tensor) -> dict:
    """A trace event of one verification: drafted ids, how many were accepted, the target's own next token, and
    the target's probability (p: (1+g, V)) of each token kept."""
    return {
        "event": "verify",
        "drafted": drafts.tolist(),
        "accepted": accepted,
        "token": token,
        "probs": [float(p[j, t]) for j, t in enumerate(kept.tolist())],
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
        if (eos_id is not None and int(token) == eos_id) or (should_stop and should_stop(0, seq[0, T:].tolist())):
            return seq, True
    return seq, False


def _output(seq: torch.Tensor, T: int, marks: list[bool], stats: dict, seconds: float) -> GenerationOutput:
    new_tokens = seq.shape[1] - T
    proposed = max(stats["proposed"], 1)
    forwards = max(stats["target_forwards"], 1)
    stats.update(
        new_tokens=new_tokens,
        seconds=seconds,
        tokens_per_s=new_tokens / max(seconds, 1e-9),
        lengths=[new_tokens],
        acceptance_rate=stats["accepted"] / proposed,
        tokens_per_target_forward=new_tokens / forwards,
        draft_marks=[marks[:new_tokens]],
    )
    return GenerationOutput(seq, None, stats, T)
