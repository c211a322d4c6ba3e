"""The server's Prometheus metrics (prometheus-client), in a registry of their own so that several servers can
live in one process (the tests)."""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW = 50  # steps over which tokens/s is measured


class ServerMetrics:
    """Requests, tokens, queue length, batch occupancy, time to first token and tokens/s."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "arlm_requests",
            "Requests by endpoint and status code (499: the client went away before the whole answer)",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("arlm_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.reused_tokens = Counter(
            "arlm_prompt_tokens_reused", "Prompt tokens whose keys and values a slot held already", registry=r
        )
        self.generated_tokens = Counter("arlm_generated_tokens", "Tokens generated", ["lane"], registry=r)
        self.finished = Counter("arlm_sequences_finished", "Sequences ended, by reason", ["reason"], registry=r)
        self.queue_length = Gauge("arlm_queue_length", "Requests waiting to start", registry=r)
        self.active_slots = Gauge("arlm_batch_occupancy", "Batch slots in use", registry=r)
        self.max_slots = Gauge("arlm_batch_slots", "Batch slots in all", registry=r)
        self.lane_busy = Gauge("arlm_lane_busy", "1 while the one-at-a-time lane runs a request", registry=r)
        self.steps = Counter("arlm_batch_steps", "Decode steps of the batch", registry=r)
        self.ttft = Histogram(
            "arlm_time_to_first_token_seconds", "From arrival to the first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.tokens_per_s = Gauge(
            "arlm_tokens_per_second", f"Batch tokens/s over the last {RATE_WINDOW} steps", registry=r
        )
        self.max_slots.set(max_batch)
        self._window: deque[tuple[int, float]] = deque(maxlen=RATE_WINDOW)

    def step(self, tokens: int, seconds: float, active: int) -> None:
        """Record one batch step."""
        self.steps.inc()
        self.generated_tokens.labels(lane="batch").inc(tokens)
        self.active_slots.set(active)
        self._window.append((tokens, seconds))
        total_s = sum(s for _, s in self._window)
        self.tokens_per_s.set(sum(t for t, _ in self._window) / total_s if total_s > 0 else 0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
