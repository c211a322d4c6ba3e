"""The scheduler: one thread owns the batch engine and loops over steps; requests wait in a queue, join the batch
at a step boundary when a slot is free, and leave when done, stopped or cancelled (a cancelled request is dropped
before the next step). Beam search, speculative decoding and prompt lookup cannot share a batch step: they wait in
a lane of their own, served one request at a time by a second thread through generate() (on the same read-only
weights, with caches of its own), never downgraded to another strategy.

Everything a request produces reaches it through job.emit(event), called from these threads, with plain dicts:
  {"type": "prompt", "index", "tokens"}   the prompt's tokens as (piece, logprob, top, start) (echo with logprobs)
  {"type": "token", "index", "token", "text", "start", "listed", ["logprob", "piece", "top"]}  a token, the text
        that became final with it, where its text begins, how many tokens have text sent (decoding/text_stream.py)
  {"type": "trace", "index", "data"}       a strategy event of the lane (beam search's beams, a verification)
  {"type": "finish", "index", "reason", "text", "listed"}  a choice ended ("stop", "length", "cancelled")
  {"type": "done", "usage"}                every choice has ended
  {"type": "error", "status", "message", "param", "code"}   the request failed (400: refused; 500: a bug)
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import torch

from arlm.config import GenerationConfig
from arlm.data.tokenizers import Tokenizer
from arlm.decoding.batch import BatchEngine, BatchSequence, Emitted
from arlm.decoding.engine import Engine, cache_dtype
from arlm.decoding.generate import check_length, generate
from arlm.decoding.stops import check_stops, stop_checker, stop_when
from arlm.decoding.text_stream import TextStream
from arlm.errors import ArlmError
from arlm.serving.jobs import Cancelled, Choice, Job, QueueFull, choice_config, error_event, report_bug, waiting_after
from arlm.serving.metrics import ServerMetrics
from arlm.serving.scored import beam_fields, logprob_fields
from arlm.serving.threads import in_own_thread

if TYPE_CHECKING:
    from arlm.decoding.types import GenerationOutput, StopCheck

LANE_STRATEGIES = ("beam", "speculative", "prompt-lookup")


class Scheduler:
    """Owns the model: the batch loop and the lane, their queues, and the metrics."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        max_len: int | None = None,
        prefill_chunk: int = 512,
        draft: torch.nn.Module | None = None,
        metrics: ServerMetrics | None = None,
        kv_dtype: str = "auto",
        reuse_prefix: bool = False,
    ) -> None:
        """kv_dtype: every request's KV cache (GenerationConfig.kv_dtype's values), the slots' and the lane's."""
        self.model, self.tokenizer, self.draft, self.kv_dtype = model, tokenizer, draft, kv_dtype
        self.engine = BatchEngine(model, max_batch, max_len, prefill_chunk, cache_dtype(kv_dtype), reuse_prefix)
        self._lane_engine = Engine(model, reuse_prefix=True) if reuse_prefix else None  # its cache kept between jobs
        self.max_queue = max_queue
        self.metrics = metrics or ServerMetrics(max_batch)
        self._cond = threading.Condition()
        self._waiting: deque[Choice] = deque()  # batch choices without a slot yet
        self._lane: deque[Job] = deque()
        self._queued = 0  # jobs that have not started
        self._owner: dict[int, Choice] = {}  # id(BatchSequence) -> its choice
        self._gate = threading.Event()  # cleared by pause()
        self._gate.set()
        self._parked = threading.Event()
        self._pause_in: int | None = None  # steps until pause() takes hold
        self._stopping = False
        self.history: deque[Job] = deque(maxlen=1000)  # finished jobs, newest last (tests, debugging)
        self._threads = [
            threading.Thread(target=self._batch_loop, name="arlm-batch", daemon=True),
            threading.Thread(target=self._lane_loop, name="arlm-lane", daemon=True),
        ]

    # ------------------------------------------------------------ the outside: threads of the web server

    def start(self) -> None:
        """Start the batch and lane threads."""
        for t in self._threads:
            t.start()

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish every queued and running request, then stop the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._gate.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)

    def validate(self, job: Job) -> None:
        """Raise ArlmError if the request cannot run (before it is queued)."""
        config = job.config
        config.validate()
        if job.n < 1:
            raise ArlmError(f"n must be >= 1, got {job.n}", param="n")
        check_stops(self.tokenizer, job.stops)
        if job.batched:
            self.engine.check(BatchSequence(job.prompt, config))
            return
        check_length(len(job.prompt), config.max_new_tokens, self.engine.max_len, name="max_tokens")
        job.check_lane(self.draft is not None)

    def submit(self, *jobs: Job) -> None:
        """Queue validated requests, all or none (the prompts of one completion); raises QueueFull when they do not
        fit beside those waiting already (max_queue)."""
        for job in jobs:
            self.validate(job)
        with self._cond:
            if self._stopping:
                raise ArlmError("the server is shutting down")
            if self._would_wait(jobs) > self.max_queue:
                waiting = f"{self.max_queue} request{'' if self.max_queue == 1 else 's'} waiting"
                raise QueueFull(f"the queue is full ({waiting}); retry later")
            for job in jobs:
                self._queue(job)
            self.metrics.queue_length.set(self._queued)
            self._cond.notify_all()

    def _would_wait(self, jobs: tuple[Job, ...]) -> int:
        """How many requests would wait with `jobs` queued: the queued ones less those the free batch slots take at
        the next step (a request in the queue is not waiting while a slot is free for it; the lock held)."""
        free = max(0, self.engine.max_batch - len(self.engine.active))
        return waiting_after(self._queued, self._waiting, free, jobs)

    def _queue(self, job: Job) -> None:
        """One job's choices into the batch's queue or the lane (the lock held)."""
        self._queued += 1
        self.metrics.prompt_tokens.inc(len(job.prompt))
        job.open_choices = job.n
        choices = [Choice(job, i, TextStream(self.tokenizer, job.stops)) for i in range(job.n)]
        if job.batched:
            self._waiting.extend(choices)
        else:
            job.choices = choices
            self._lane.append(job)

    def cancel(self, job: Job) -> None:
        """The client went away: the job's choices end before the next step (or as soon as the lane checks); a job
        waiting for the lane leaves its queue at once (its place held --max-queue against requests still waited for)."""
        if not job.cancelled.is_set():
            job.cancel_step = self.engine.steps
            job.cancelled.set()
        with self._cond:
            if job in self._lane:  # (a Job equals itself only)
                self._lane.remove(job)
                self._queued -= 1
                self.metrics.queue_length.set(self._queued)
                for choice in job.choices:
                    self._finish(choice, "cancelled")
            self._cond.notify_all()

    def pause(self, after_steps: int = 0) -> None:
        """Hold the batch loop at the next step boundary, or (returning at once) after `after_steps` more steps
        (tests: make arrivals and what a client has seen deterministic)."""
        if after_steps > 0:
            with self._cond:
                self._pause_in = after_steps
            return
        self._gate.clear()
        self._parked.clear()
        with self._cond:
            self._cond.notify_all()
        self._parked.wait(timeout=60)

    def resume(self) -> None:
        """Let the batch loop go on."""
        with self._cond:
            self._pause_in = None
        self._gate.set()

    @property
    def paused(self) -> bool:
        """Whether the batch loop is held at a step boundary now."""
        return not self._gate.is_set() and self._parked.is_set()

    def running(self) -> list[Job]:
        """Jobs with a choice in the batch now."""
        with self._cond:
            jobs = {id(c.job): c.job for c in self._owner.values()}
        return list(jobs.values())

    def alive(self) -> bool:
        """Whether the batch and lane threads are running (before start and after a shutdown: False)."""
        return all(t.is_alive() for t in self._threads)

    def state(self) -> dict:
        """Counts for /health and the tests."""
        with self._cond:
            return {
                "queued": self._queued,
                "active_slots": len(self.engine.active),
                "free_slots": len(self.engine.free),
                "max_batch": self.engine.max_batch,
                "steps": self.engine.steps,
            }

    # ------------------------------------------------------------ the batch thread

    def _batch_loop(self) -> None:
        while True:
            if not self._gate.is_set():
                self._parked.set()
                self._gate.wait()
            with self._cond:
                self._drop_cancelled()
                self._admit()
                if not self.engine.active:
                    if self._stopping and not self._waiting:
                        return
                    self._parked.set()  # idle counts as parked
                    self._cond.wait()
                    continue
            started = time.perf_counter()
            try:
                emitted = self.engine.step()
                self._deliver(emitted)
            except Exception as exc:  # a bug: fail what is running, keep serving
                self._fail_active(exc)
                continue
            self.metrics.step(len(emitted), time.perf_counter() - started, len(self.engine.active))
            self._count_down()

    def _count_down(self) -> None:
        """A pause asked for after some steps takes hold."""
        with self._cond:
            if self._pause_in is not None:
                self._pause_in -= 1
                if self._pause_in <= 0:
                    self._pause_in = None
                    self._parked.clear()
                    self._gate.clear()

    def _admit(self) -> None:
        """Waiting choices into free slots, first come first served; a choice that cannot start fails its request
        alone."""
        while self._waiting and self.engine.free:
            choice = self._waiting.popleft()
            try:
                self._admit_one(choice)
            except Exception as exc:  # (a bug, or what validate missed): this request fails, the others go on
                self._fail_job(choice, exc)
        self.metrics.active_slots.set(len(self.engine.active))

    def _admit_one(self, choice: Choice) -> None:
        """One waiting choice into a free slot."""
        job = choice.job
        choice.seq = BatchSequence(
            job.prompt,
            choice_config(job.config, choice.index),
            eos_id=job.eos_id,
            top_logprobs=job.top_logprobs,
            presence_penalty=job.presence_penalty,
            frequency_penalty=job.frequency_penalty,
            logit_bias=job.logit_bias,
            prompt_logprobs=job.prompt_logprobs,
            matcher=None if job.grammar is None else job.grammar.matcher(),
        )
        self._count_reused(job, self.engine.admit(choice.seq))
        self._owner[id(choice.seq)] = choice
        if job.admitted_step is None:
            job.admitted_step = self.engine.steps
            self._queued -= 1
            self.metrics.queue_length.set(self._queued)

    def _fail_job(self, choice: Choice, exc: Exception) -> None:
        """A choice that could not start: its request's other choices leave the batch and the queue, and the request
        gets an error (400 for arlm's refusals, 500 for a bug) (the lock held)."""
        job = choice.job
        if not isinstance(exc, ArlmError):
            report_bug(exc, [job])
        self._remove({id(job)})
        if job.admitted_step is None:
            job.admitted_step = self.engine.steps
            self._queued -= 1
            self.metrics.queue_length.set(self._queued)
        job.open_choices = 0
        self._send(job, error_event(exc))

    def _remove(self, jobs: set[int]) -> None:
        """Take the choices of the jobs (by id) out of the batch, freeing their slots, and out of the queue (the
        lock held)."""
        for seq in list(self.engine.active):
            if id(self._owner[id(seq)].job) in jobs:
                self.engine.release(seq, "error")
                self._owner.pop(id(seq), None)
        self._waiting = deque(c for c in self._waiting if id(c.job) not in jobs)

    def _drop_cancelled(self) -> None:
        """End the choices of cancelled jobs: running ones leave the batch, waiting ones the queue."""
        for seq in list(self.engine.active):
            choice = self._owner[id(seq)]
            if choice.job.cancelled.is_set():
                self.engine.release(seq, "cancelled")
                choice.job.release_step = self.engine.steps
                self._finish(choice, "cancelled")
        dropped = [c for c in self._waiting if c.job.cancelled.is_set()]
        for choice in dropped:
            self._waiting.remove(choice)
            if choice.job.admitted_step is None and not any(c.job is choice.job for c in self._waiting):
                self._queued -= 1
                choice.job.admitted_step = self.engine.steps
            self._finish(choice, "cancelled")
        self.metrics.queue_length.set(self._queued)
        self.metrics.active_slots.set(len(self.engine.active))

    def _deliver(self, emitted: list[Emitted]) -> None:
        """Hand each new token to its request; stop strings end a choice here, before the next step."""
        for e in emitted:
            choice = self._owner[id(e.sequence)]
            if e.sequence.prompt_logprobs and len(e.sequence.generated) == 1:
                self._send(choice.job, self._prompt_event(choice, e.sequence))
            event = self._token_event(choice, e.token)
            if e.logprob is not None:
                event |= logprob_fields(self.tokenizer, e.token, e.logprob, e.top)
            self._send(choice.job, event)
            if choice.text.stopped and not e.sequence.finished:
                self.engine.release(e.sequence, "stop")
            if e.sequence.finished:  # a stop string on the last token max_tokens allows: "stop", not "length"
                self._finish(choice, "stop" if choice.text.stopped else e.sequence.finish_reason)

    def _prompt_event(self, choice: Choice, seq: BatchSequence) -> dict:
        """The prompt's tokens as (id, piece, log-probability, top, start) for an echo: the first has no log-probability
        or top; start is where its text begins in the prompt's (a token inside a character: where that begins)."""
        piece, prompt = self.tokenizer.token_text, TextStream(self.tokenizer, skip_special=False)  # (as echoed)
        for token in seq.prompt:  # (its starts: where each id's text begins, as a reply's are found)
            prompt.push(token)
        tokens = [(seq.prompt[0], piece(seq.prompt[0]), None, None, 0)]
        for token, scored, start in zip(seq.prompt[1:], seq.prompt_scores, prompt.starts[1:]):
            tokens.append((token, piece(token), scored.logprob, [(t, piece(t), lp) for t, lp in scored.top], start))
        seq.prompt_scores = []
        return {"type": "prompt", "index": choice.index, "tokens": tokens}

    def _token_event(self, choice: Choice, token: int) -> dict:
        job = choice.job
        now = time.perf_counter()
        if job.first_token is None:
            job.first_token = now
            self.metrics.ttft.observe(now - job.created)
        job.completion_tokens += 1
        text = choice.text.push(token)
        return {"type": "token", "index": choice.index, "token": token, "text": text} | choice.text.position()

    def _finish(self, choice: Choice, reason: str) -> None:
        """A choice has ended: its last text, and the job's usage once every choice has."""
        if choice.seq is not None:
            with self._cond:  # a re-entrant lock: _drop_cancelled holds it already
                self._owner.pop(id(choice.seq), None)
        job = choice.job
        self.metrics.finished.labels(reason=reason).inc()
        last = {"text": choice.text.flush(), "listed": choice.text.position()["listed"]}
        self._send(job, {"type": "finish", "index": choice.index, "reason": reason} | last)
        job.open_choices -= 1
        if job.open_choices == 0:
            job.finished_step = self.engine.steps
            self.history.append(job)
            self._send(job, {"type": "done", "usage": job.usage()})

    def _send(self, job: Job, event: dict) -> None:
        """Deliver an event; a request whose receiver is gone counts as cancelled."""
        try:
            job.emit(event)
        except Exception:
            job.cancelled.set()

    def _fail_active(self, exc: Exception) -> None:
        """A step failed: every request in the batch gets its error (a traceback on stderr where it is a bug)."""
        with self._cond:
            failed = {id(self._owner[id(s)].job): self._owner[id(s)].job for s in self.engine.active}
            self._remove(set(failed))
        if not isinstance(exc, ArlmError):
            report_bug(exc, failed.values())
        for job in failed.values():
            self._send(job, error_event(exc))

    # ------------------------------------------------------------ the lane thread

    def _lane_loop(self) -> None:
        while True:
            with self._cond:
                while not self._lane and not self._stopping:
                    self._cond.wait()
                if not self._lane:
                    return
                job = self._lane.popleft()
                self._queued -= 1
                self.metrics.queue_length.set(self._queued)
            self.metrics.lane_busy.set(1)
            try:  # in a thread that ends with the job, its OpenMP workers too (serving/threads.py)
                in_own_thread(lambda job=job: self._run_lane_job(job), "arlm-lane-job")
            except Cancelled:
                for choice in job.choices[job.choices_done :]:
                    self._finish(choice, "cancelled")
            except Exception as exc:  # arlm's refusal, or a bug: fail this request, keep serving
                if not isinstance(exc, ArlmError):
                    report_bug(exc, [job])
                self._send(job, error_event(exc))
            finally:
                self.metrics.lane_busy.set(0)

    def _run_lane_job(self, job: Job) -> None:
        """Beam search (one call for all n choices) or speculative / prompt lookup (one call per choice)."""
        job.choices_done = 0
        if job.cancelled.is_set():
            raise Cancelled
        if job.config.strategy == "beam":
            config = dataclasses.replace(job.config, num_return_sequences=job.n)
            out = self._lane_generate(job, None, config)
            for row, (choice, ids) in enumerate(zip(job.choices, out.generated())):
                for j, token in enumerate(ids):  # with the model's own log-probability along its beam, if asked
                    scored = beam_fields(self.tokenizer, out, row, j) if job.trace or job.top_logprobs >= 0 else {}
                    self._send(job, self._token_event(choice, token) | scored)
                self._lane_finish(job, choice, ids)
            return
        for choice in job.choices:
            config = choice_config(job.config, choice.index)
            ids = self._lane_generate(job, choice, config).generated()[0]
            self._lane_finish(job, choice, ids)

    def _lane_generate(self, job: Job, choice: Choice | None, config: GenerationConfig) -> GenerationOutput:
        """generate() with the request's callbacks: tokens streamed (with logprobs: speculative decoding's from the
        verification that kept them, sent before them), stop strings, trace, cancellation; the server's KV cache
        dtype."""
        config = dataclasses.replace(config, kv_dtype=self.kv_dtype)
        verified: deque[tuple[float, list]] = deque()  # the last verification's kept tokens': log-probability, top

        def check() -> None:
            if job.cancelled.is_set():
                raise Cancelled

        def on_token(tokens: torch.Tensor) -> None:
            check()
            token = int(tokens.reshape(-1)[0])
            event = self._token_event(choice, token)
            if job.top_logprobs >= 0:
                logprob, top = verified.popleft()
                event |= logprob_fields(self.tokenizer, token, logprob, top[: job.top_logprobs])
            self._send(job, event)
            self.metrics.generated_tokens.labels(lane="lane").inc()

        def trace(event: dict) -> None:
            check()
            if event["event"] == "verify":
                verified.clear()
                verified.extend(zip(event["logprobs"], event["top"]))
            if job.trace:
                self._send(job, {"type": "trace", "index": 0 if choice is None else choice.index, "data": event})

        tok = self.tokenizer
        out = generate(
            self._lane_engine or self.model,
            [job.prompt],
            config,
            eos_id=job.eos_id,
            pad_id=tok.pad_id,
            draft=self.draft,
            on_token=on_token if choice is not None else None,
            should_stop=stop_when(lambda: choice.text.stopped) if choice is not None else self._beam_stop(job),
            trace=trace,  # (every lane job's: how a beam search hears a cancel)
            top_logprobs=None if choice is not None or job.trace else max(job.top_logprobs, 0),  # (beam search's)
        )
        if self._lane_engine is not None:  # (--reuse-prefix: the beginning of the prompt the lane's cache held)
            self._count_reused(job, self._lane_engine.reused)
        return out

    def _count_reused(self, job: Job, reused: int) -> None:
        """Prompt tokens a cache held already (--reuse-prefix): into the metric, and the job's usage (the most any of
        its choices reused)."""
        self.metrics.reused_tokens.inc(reused)
        job.cached_tokens = max(job.cached_tokens, reused)

    def _beam_stop(self, job: Job) -> StopCheck | None:
        """Beam search's stop check: a hypothesis ends once its text holds one of the request's stop strings (the
        text sent is then cut before it, as for every strategy); None without stops."""
        return stop_checker(self.tokenizer, job.stops)

    def _lane_finish(self, job: Job, choice: Choice, ids: list[int]) -> None:
        ended_at_eos = bool(ids) and job.config.stop_at_eos and ids[-1] == job.eos_id
        reason = "stop" if choice.text.stopped or ended_at_eos else "length"
        if job.config.strategy == "beam":
            self.metrics.generated_tokens.labels(lane="lane").inc(len(ids))
        job.choices_done += 1
        self._finish(choice, reason)
