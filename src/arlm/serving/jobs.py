"""A request as the scheduler holds it: a Job (n choices continuing one prompt, with its settings and where its
events go) and its Choices."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from arlm.config import GenerationConfig
from arlm.decoding.batch import BATCH_STRATEGIES, BatchSequence
from arlm.decoding.grammar import JsonGrammar
from arlm.decoding.text_stream import TextStream
from arlm.errors import ArlmError
from arlm.serving.request_id import name_failed

Event = dict


class QueueFull(Exception):
    """The queue already holds max_queue requests."""


class Cancelled(Exception):
    """Raised inside a lane generation whose client went away."""


def error_event(exc: Exception) -> dict:
    """The event of a request that failed: 400 naming the argument at fault for arlm's refusals, 500 for a bug."""
    if isinstance(exc, ArlmError):
        return {"type": "error", "status": 400, "message": str(exc), "param": exc.param, "code": exc.code}
    return {"type": "error", "status": 500, "message": f"internal error: {exc}", "param": None, "code": None}


def report_bug(exc: Exception, jobs: Iterable[Job]) -> None:
    """A bug's traceback on stderr, headed by the ids of the requests it failed (their x-request-id)."""
    name_failed([job.request_id for job in jobs])
    traceback.print_exception(exc, file=sys.stderr)


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded `seed`: the seed itself for the first, a hash of both for the
    others (seed + i made a request seeded s + 1 repeat s's choices 1.. as its 0..: neighbouring seeds shared
    samples)."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # (a non-negative 63-bit seed, as the request's may be)


def choice_config(config: GenerationConfig, index: int) -> GenerationConfig:
    """Choice i of n: the request's settings, seeded choice_seed(seed, i) (choices differ, each is reproducible)."""
    if config.seed is None or index == 0:
        return config
    return dataclasses.replace(config, seed=choice_seed(config.seed, index))


@dataclass(eq=False)
class Job:
    """One request: n choices continuing one prompt, with its settings and where its events go."""

    prompt: list[int]
    config: GenerationConfig
    emit: Callable[[Event], None]
    n: int = 1
    eos_id: int | None = None
    top_logprobs: int = -1  # -1: none; 0: the chosen token's; k: also the k most likely
    prompt_logprobs: bool = False  # the prompt's tokens scored too, sent before the first token (echo; batch)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (batch lane only)
    grammar: JsonGrammar | None = None  # each choice's text kept to this JSON schema (response_format; batch only)
    stops: list[str] = field(default_factory=list)
    named: Callable[[str], str] = str  # an argument as the request's endpoint names it (its refusals' param)
    trace: bool = False  # forward the lane's strategy events
    request_id: str = ""  # the HTTP request's x-request-id, which a bug's traceback names
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens a slot held already (--reuse-prefix): the most any choice reused
    open_choices: int = 0
    cancel_step: int | None = None  # batch step count when the cancel came
    admitted_step: int | None = None  # batch step count when its first choice joined the batch
    finished_step: int | None = None  # batch step count when its last choice ended
    release_step: int | None = None  # batch step count when a cancelled choice left the batch
    choices: list[Choice] = field(default_factory=list)  # lane jobs: their choices, run in turn
    choices_done: int = 0

    @property
    def batched(self) -> bool:
        """Whether the strategy shares the batch (else the one-at-a-time lane)."""
        return self.config.strategy in BATCH_STRATEGIES

    def check_lane(self, has_draft: bool) -> None:
        """Raise ArlmError for what the lane's strategy cannot do (never downgraded): has_draft, the server's;
        each argument named as the request's endpoint names it (the Responses API's text.format for
        response_format)."""
        strategy = self.config.strategy
        unsupported = {
            "echo with logprobs": self.prompt_logprobs,
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "logit_bias": bool(self.logit_bias),
            "response_format": self.grammar is not None,
        }
        for name, given in unsupported.items():
            if given:
                param = self.named(name.split()[-1])
                raise ArlmError(f"{self.named(name)} is not supported with strategy {strategy}", param=param)
        if strategy == "speculative" and not has_draft:
            message = "this server has no draft model (start it with --draft MODEL); try prompt-lookup"
            raise ArlmError(message, param="strategy")
        if strategy == "beam" and self.n > self.config.num_beams:
            raise ArlmError(f"n ({self.n}) must be <= num_beams ({self.config.num_beams})", param="n")

    def usage(self) -> dict:
        """OpenAI's usage counts."""
        prompt = len(self.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass
class Choice:
    """One of a job's n continuations."""

    job: Job
    index: int
    text: TextStream
    seq: BatchSequence | None = None


def waiting_after(queued: int, waiting: Iterable[Choice], free: int, jobs: Iterable[Job]) -> int:
    """How many requests wait once `jobs` are queued beside `queued` ones whose choices not yet started are `waiting`
    (in order), and `free` batch slots start the next ones: a request waits until its first choice starts."""
    starting = list(itertools.islice(waiting, free))  # choices queued already that the next step starts
    leaving = {id(c.job) for c in starting if c.job.admitted_step is None}
    left, joining, jobs = free - len(starting), 0, list(jobs)
    for job in jobs:  # the new requests whose first choice a slot left takes
        if job.batched and left > 0:
            joining, left = joining + 1, left - job.n
    return queued - len(leaving) + len(jobs) - joining
