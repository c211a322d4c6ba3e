"""What a target forward over k new tokens costs, relative to a one-token forward: the price adaptive speculative
decoding weighs drafted tokens against (decoding/speculative.py, AdaptiveGamma).

The default is a fixed model measured once: SmolLM2 in float32 on 2 CPU cores took 18.4 ms for 1 token, 26.3 for 2, 31.8
for 3, 36.0 for 5, 36.9 for 8 (docs/perf.md), about 1 + VERIFY_FIXED + VERIFY_PER_TOKEN (k - 1). Machines differ far
more than that: with arlm's kernels a 5-token forward costs 1.04-1.11x one on AMX (bfloat16), 2.8-3.1x on AVX2 (int4),
so where decoding is greedy (the output is the same whatever is drafted) `ForwardCost` measures the rounds as they run
and uses the medians of what it saw; a draft model's rounds are timed too, so that a drafted token is priced by what it
took rather than by the draft's share of the weights (on a Zen 4, SmolLM2's int4 weights drafting for its int8 ones read
0.58 of the bytes and took ~0.75 of the time of a step). Where sampling, the default stays: a measured price would make
the number drafted, and so which random draws a seed gives, depend on timing.
"""

from __future__ import annotations

import statistics
from collections import deque

VERIFY_FIXED = 0.4
VERIFY_PER_TOKEN = 0.1
WINDOW = 9  # rounds kept per number of tokens: the median of the latest WINDOW (a slow first call falls out)


class ForwardCost:
    """Relative cost of a forward over k new tokens: measured (`record`), else the fixed model."""

    def __init__(self, measure: bool, fixed: float = VERIFY_FIXED, per_token: float = VERIFY_PER_TOKEN) -> None:
        self.measure = measure
        self.fixed, self.per_token = fixed, per_token
        self.seconds: dict[int, deque[float]] = {}
        self.drafted: deque[float] = deque(maxlen=WINDOW)  # seconds per token of a draft model's latest rounds
        self.draft_rounds = 0

    def record(self, tokens: int, seconds: float) -> None:
        """One forward over `tokens` new tokens took `seconds` (ignored unless measuring)."""
        if self.measure:
            self.seconds.setdefault(tokens, deque(maxlen=WINDOW)).append(seconds)

    def record_draft(self, tokens: int, seconds: float) -> None:
        """A draft model drafted `tokens` tokens in `seconds` (ignored unless measuring; its first round too, where a
        draft with a cache of its own reads the prompt)."""
        if self.measure and tokens:
            self.draft_rounds += 1
            if self.draft_rounds > 1:
                self.drafted.append(seconds / tokens)

    def priced(self) -> bool:
        """Whether the unit of every price, a one-token forward, is known (measuring: one has been seen)."""
        return not self.measure or 1 in self.seconds

    def verified(self) -> bool:
        """Whether a forward over several tokens has been seen (always, where not measuring)."""
        return not self.measure or any(k > 1 for k in self.seconds)

    def draft(self, default: float) -> float:
        """A drafted token's cost in one-token target forwards: the ratio of the measured medians where both were
        seen, else `default` (the draft's share of the target's weights)."""
        one = self._median(1)
        return statistics.median(self.drafted) / one if one is not None and self.drafted else default

    def relative(self, tokens: int) -> float:
        """Cost of a forward over `tokens` (>= 1) new tokens in one-token forwards: measured where both it and a
        one-token forward were, else along the line from 1 to the nearest measured count, else the fixed model."""
        if tokens <= 1:
            return 1.0
        one = self._median(1)
        if one is None:
            return 1.0 + self.fixed + self.per_token * (tokens - 1)
        if tokens in self.seconds:
            return self._median(tokens) / one
        measured = [k for k in self.seconds if k > 1]
        if not measured:
            return 1.0 + self.fixed + self.per_token * (tokens - 1)
        nearest = min(measured, key=lambda k: (abs(k - tokens), k))
        return 1.0 + (self._median(nearest) / one - 1.0) * (tokens - 1) / (nearest - 1)

    def _median(self, tokens: int) -> float | None:
        """Median seconds of the latest forwards over `tokens` tokens, None if none was seen."""
        times = self.seconds.get(tokens)
        return statistics.median(times) if times else None
