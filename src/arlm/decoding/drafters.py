"""The drafters of speculative decoding: what proposes the tokens the target verifies. A draft model (a separate
one over its own cache, or the target's own weights over the target's cache: drafts.py), prompt lookup (copy what
followed the latest earlier occurrence of the context's last n-gram), and the two together (lookup where the context
recurs, the model elsewhere). Each has `propose(seq, gamma, ...)` -> (tokens (g,), their draft distributions (g, V) or
None for certain ones), `rollback(length)` after a verification, and `close()`."""

from __future__ import annotations

import torch

from arlm.config import GenerationConfig
from arlm.decoding.drafts import shares_cache
from arlm.decoding.engine import Engine, cache_dtype
from arlm.decoding.processors import History, best, logits_to_probs, process
from arlm.decoding.settings import BY_MATCH_NGRAM, LOOKUP_MATCH_MIN
from arlm.model.kv_cache import KVCache

MAX_ADAPTIVE_DRAFT = 16


class ModelDrafter:
    """A model on the same vocabulary (a separate draft, or the target's own weights: decoding/drafts.py) proposes
    tokens through its own engine, over a cache of its own or, for the target's own weights, the target's."""

    source = "model"  # what drafted the last proposal

    def __init__(
        self,
        model: torch.nn.Module,
        max_len: int,
        history: History,
        target: Engine | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """target: draft over that engine's cache (drafts.py `shares_cache`) instead of a cache of the draft's own (of
        `dtype`; None: the draft's float dtype)."""
        self.engine = Engine(model)
        self.target = target
        if target is None:
            self.engine.open(1, max_len, dtype=dtype)
        self.history = history

    def propose(
        self, seq: torch.Tensor, gamma: int, config: GenerationConfig, greedy: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to gamma draft tokens continuing seq (1, S), and the draft distribution q each was drawn from; where
        greedy and decoding stops at EOS, none past a drafted EOS (accepted, it ends the text; rejected, what the draft
        wrote after it is rejected too). A draft of a shorter context than the text's drafts fewer, and none once the
        text fills it (the target then decodes alone: the same output)."""
        gamma = min(gamma, self.engine.model.config.block_size - seq.shape[1] + 1)  # it reads S + gamma - 1 positions
        if gamma <= 0:
            return seq.new_zeros(0), None
        if self.target is not None:  # a view of the target's cache, its first layers: positions past it are scratch
            cache, layers = self.target.cache, self.engine.model.config.n_layer
            self.engine.cache = KVCache.over(cache.k[:layers], cache.v[:layers], cache.length, cache.zeroed)
        pending = seq[:, self.engine.length :]  # tokens the draft has not seen yet (the prompt, then 1 or 2)
        logits = self.engine.prefill(pending) if pending.shape[1] > 1 else self.engine.step(pending)  # (1, V)
        tokens, probs = [], []
        for i in range(gamma):
            if i:
                logits = self.engine.step(tokens[-1].view(1, 1))  # (1, V)
            context = torch.cat([seq] + [t.view(1, 1) for t in tokens], dim=1)
            if greedy:
                token = best(process(logits.float(), context, config, self.history))[0]
            else:
                q = logits_to_probs(logits, context, config, self.history)[0]  # (V,)
                token = torch.multinomial(q, 1, generator=generator)[0]
                probs.append(q)
            tokens.append(token)
            if greedy and self.history.eos_id is not None and int(token) == self.history.eos_id:
                break
        return torch.stack(tokens), (torch.stack(probs) if probs else None)

    def rollback(self, length: int) -> None:
        """Forget cached positions from `length` on (a draft over the target's cache keeps none of its own)."""
        if self.target is None:
            self.engine.rollback(min(length, self.engine.length))

    def close(self) -> None:
        """Free the draft's cache."""
        self.engine.close()


class NgramIndex:
    """Where each n-gram (n = 1..max_n) of a growing id list (the prompt, then the generated text) last occurred
    with a token after it: the n-gram cache of prompt lookup, updated as tokens are appended."""

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n
        self.ids: list[int] = []
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence that has a follower

    def extend(self, new: list[int]) -> None:
        """Append ids; the n-grams ending just before each appended id become matchable."""
        for token in new:
            end = len(self.ids)
            for n in range(1, min(self.max_n, end) + 1):
                self.latest[tuple(self.ids[end - n : end])] = end
            self.ids.append(token)

    def lookup(self, gamma: int) -> tuple[list[int], int]:
        """Up to gamma ids that followed the latest earlier occurrence of the longest matching tail n-gram, and n
        (0: no match)."""
        ids = self.ids
        for n in range(min(self.max_n, len(ids) - 1), 0, -1):
            end = self.latest.get(tuple(ids[-n:]))
            if end is not None:
                return ids[end : end + gamma], n
        return [], 0


def lookup_gamma(matched: int) -> int:
    """Tokens adaptive prompt lookup drafts after a match of the context's last `matched` tokens: none below
    LOOKUP_MATCH_MIN (one shared token predicts little), then 4, 8, 16 (a longer match is a copy more likely to go
    on). Chosen by replaying greedy SmolLM2 on the built-in prompt sets against measured forward costs
    (docs/perf.md, "Speculative decoding")."""
    if matched < LOOKUP_MATCH_MIN:
        return 0
    return min(4 << (matched - LOOKUP_MATCH_MIN), MAX_ADAPTIVE_DRAFT)


def lookup_ngram(max_ngram: int, by_match: bool) -> int:
    """The longest n-gram prompt lookup matches: by_match needs matches long enough to reach `lookup_gamma`'s
    largest draft (BY_MATCH_NGRAM = LOOKUP_MATCH_MIN + 2 tokens)."""
    return max(max_ngram, BY_MATCH_NGRAM) if by_match else max_ngram


class PromptLookupDrafter:
    """Draft-free: copy what followed the latest earlier occurrence of the context's last n-gram, in the prompt or
    in the text generated so far (an NgramIndex kept up to date, not a scan of the whole context each round).
    by_match: draft as many tokens as the match's length warrants (`lookup_gamma`), at most the gamma asked."""

    source = "lookup"

    def __init__(self, max_ngram: int, by_match: bool = False) -> None:
        self.by_match = by_match
        self.index = NgramIndex(lookup_ngram(max_ngram, by_match))

    def match(self, seq: torch.Tensor, most: int) -> tuple[list[int], int]:
        """Up to `most` ids that followed the latest earlier occurrence of the longest n-gram ending seq (1, S), and
        its length n (0: none)."""
        self.index.extend(seq[0, len(self.index.ids) :].tolist())
        return self.index.lookup(most) if most > 0 else ([], 0)

    def propose(
        self, seq: torch.Tensor, gamma: int, config: GenerationConfig, greedy: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, None]:
        """Up to gamma tokens (possibly none), proposed with certainty (q one-hot)."""
        follow, matched = self.match(seq, gamma)
        if self.by_match:
            follow = follow[: lookup_gamma(matched)]
        return torch.tensor(follow, dtype=torch.long, device=seq.device), None

    def rollback(self, length: int) -> None:
        """Nothing cached beyond the accepted text."""

    def close(self) -> None:
        """Nothing to free."""


class LookupThenModel:
    """Prompt lookup where the context's last LOOKUP_MATCH_MIN or more tokens recur (its tokens are free: a copy of
    the request, or of the text so far), the draft model elsewhere; `source` says which drafted last. Over the
    target's cache the model needs no catch-up on the tokens lookup drafted."""

    def __init__(self, model: ModelDrafter, lookup: PromptLookupDrafter, most: int, max_len: int) -> None:
        """lookup: drafting by the match's length (by_match); most: the most tokens a lookup round drafts; max_len: of
        the text."""
        if not lookup.by_match:
            raise ValueError(
                "lookup first drafts by the length of the match: give a PromptLookupDrafter(by_match=True)"
            )
        self.model, self.lookup = model, lookup
        self.most, self.max_len = most, max_len
        self.source = "model"

    def propose(
        self, seq: torch.Tensor, gamma: int, config: GenerationConfig, greedy: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Lookup's tokens (by the length of the match, at most `most`, q one-hot) where the context recurs, else up
        to gamma tokens of the draft model."""
        room = self.max_len - seq.shape[1] - 1  # the target's own token follows the drafts
        follow, _ = self.lookup.propose(seq, min(self.most, room), config, greedy, generator)  # by_match: by length
        self.source = "lookup" if follow.numel() else "model"
        return (follow, None) if follow.numel() else self.model.propose(seq, gamma, config, greedy, generator)

    def rollback(self, length: int) -> None:
        """The model forgets what the target rejected."""
        self.model.rollback(length)

    def close(self) -> None:
        """Free the model's cache."""
        self.model.close()


Drafter = ModelDrafter | PromptLookupDrafter | LookupThenModel  # what proposes a round's drafts


def make_drafter(
    draft: torch.nn.Module | None, max_len: int, most: int, config: GenerationConfig, history: History, target: Engine
) -> Drafter:
    """The drafter of a text of at most max_len tokens drafting at most `most` a round: the draft model's
    ('speculative'; over the target's cache where the draft is the target's own weights; after prompt lookup where
    config.lookup_first) or n-gram lookup in the context ('prompt-lookup')."""
    lookup = PromptLookupDrafter(config.prompt_lookup_ngram, by_match=config.adaptive_draft or config.lookup_first)
    if config.strategy != "speculative":
        return lookup
    shared = shares_cache(draft, target.model, target.model.new_cache(1, 1).k.dtype)  # both compute in one dtype
    dtype = cache_dtype(config.kv_dtype)  # a separate draft's cache's, as the target's
    model = ModelDrafter(draft, max_len + most + 1, history, target if shared else None, dtype)
    return LookupThenModel(model, lookup, most, max_len) if config.lookup_first else model
