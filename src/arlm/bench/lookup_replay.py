"""Prompt lookup's drafting policies replayed offline on a greedy output (benchmarks/lookup_replay.py).

Exact for greedy decoding: speculative decoding at temperature 0 writes greedy's text, so a drafted token is
accepted exactly when it equals greedy's next token, and a policy's rounds follow from greedy's output alone. A
round that drafts g tokens costs one forward over 1 + g new tokens; a policy's speed-up on a prompt is
(tokens x one-token forward) / (the sum of its rounds' costs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from arlm.decoding.drafters import MAX_ADAPTIVE_DRAFT, NgramIndex, lookup_gamma
from arlm.decoding.speculative import AdaptiveGamma

Policy = Callable[[NgramIndex, int], list[int]]  # (index over the text so far, most tokens to draft) -> drafts


@dataclass
class Replay:
    """One prompt decoded with a policy: tokens written, target forwards (rounds), drafts proposed and accepted,
    and the rounds' cost (in the unit of the cost table)."""

    tokens: int
    rounds: int
    proposed: int
    accepted: int
    cost: float


def fixed(gamma: int, min_match: int = 1) -> Policy:
    """Draft gamma tokens after any match of at least min_match tokens (`--strategy prompt-lookup`: min_match 1)."""

    def draft(index: NgramIndex, room: int) -> list[int]:
        follow, matched = index.lookup(min(gamma, room))
        return follow if matched >= min_match else []

    return draft


def by_match(index: NgramIndex, room: int) -> list[int]:
    """What `--adaptive-draft` prompt lookup drafts: by the match's length (`lookup_gamma`); where greedy, also at
    most what an AdaptiveGamma on the measured cost allows (replay's `rate`)."""
    follow, matched = index.lookup(min(MAX_ADAPTIVE_DRAFT, room))
    return follow[: lookup_gamma(matched)]


def replay(
    prompt: list[int],
    greedy: list[int],
    policy: Policy,
    max_n: int,
    cost: dict[int, float],
    rate: AdaptiveGamma | None = None,
) -> Replay:
    """Decode `greedy` (the target's greedy continuation of `prompt`) with the policy; cost[k]: one forward over
    k new tokens; rate: an AdaptiveGamma whose gamma caps each round (the running-acceptance rule), told each
    round's cost from the table as greedy decoding tells it the time it measured."""
    index, seq, pos = NgramIndex(max_n), list(prompt), 0
    out = Replay(len(greedy), 0, 0, 0, 0.0)
    while pos < len(greedy):
        index.extend(seq[len(index.ids) :])
        room = len(greedy) - pos - 1  # a round always adds the target's own token after the accepted drafts
        drafts = policy(index, min(room, rate.next()) if rate else room)
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == greedy[pos + accepted]:
            accepted += 1
        if rate:
            rate.cost.record(1 + len(drafts), cost[1 + len(drafts)])
            rate.update(len(drafts), accepted)
        out.rounds, out.proposed, out.accepted = out.rounds + 1, out.proposed + len(drafts), out.accepted + accepted
        out.cost += cost[1 + len(drafts)]
        seq += greedy[pos : pos + accepted + 1]
        pos += accepted + 1
    return out
