"""`arlm serve` as a process: SIGTERM lets an in-flight request finish before it exits, and a burst of 200
requests from 16 clients leaves no 5xx, no slot in use and no growth of memory after the first 50."""

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serving.conftest import MODEL_ID, SSEStream, request, start_subprocess, wait_until


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_sigterm_drains_the_request_in_flight(tiny_lm):
    proc, base = start_subprocess([str(tiny_lm.checkpoint), "--name", MODEL_ID, "--max-batch", "2"])
    try:
        assert request(base, "GET", "/health")[1]["dtype"] == "float32"  # what auto makes of an arlm checkpoint
        body = {"model": MODEL_ID, "prompt": "The data", "max_tokens": 150, "temperature": 0, "stream": True}
        stream = SSEStream(base, "/v1/completions", body)
        assert stream.next()["choices"]
        proc.send_signal(signal.SIGTERM)
        rest = [stream.next() for _ in range(400)]
        rest = rest[: rest.index(None)] if None in rest else rest
        assert rest[-1] == "[DONE]"
        finished = [e for e in rest[:-1] if e.get("choices") and e["choices"][0]["finish_reason"]]
        assert finished and finished[0]["usage"]["completion_tokens"] > 1
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _client(base: str, seed: int, count: int, statuses: list, lock: threading.Lock, done: list) -> None:
    """One client: `count` requests of every kind, some dropped half way."""
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.choice(["completion", "chat", "stream", "drop"])
        body = {"model": MODEL_ID, "max_tokens": rng.randint(1, 40), "temperature": rng.choice([0, 0.8]),
                "seed": rng.randint(0, 99), "n": rng.choice([1, 1, 2])}  # fmt: skip
        if rng.random() < 0.2:
            body["stop"] = ["e", "the"]
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": "say something " * rng.randint(1, 5)}]
            status, _ = request(base, "POST", "/v1/chat/completions", body)
        elif kind in ("stream", "drop"):
            body.update(prompt="The data model " * rng.randint(1, 8), stream=True)
            stream = SSEStream(base, "/v1/completions", body)
            status = stream.response.status
            for _ in range(2 if kind == "drop" else 1000):
                if stream.next() in (None, "[DONE]"):
                    break
            stream.close()
        else:
            body["prompt"] = "Objects are " * rng.randint(1, 10)
            status, _ = request(base, "POST", "/v1/completions", body)
        with lock:
            statuses.append(status)
            done.append(1)


@pytest.mark.slow
def test_a_burst_of_200_requests_from_16_clients(tiny_lm):
    proc, base = start_subprocess([str(tiny_lm.checkpoint), "--name", MODEL_ID, "--max-batch", "8"])
    statuses, done, lock = [], [], threading.Lock()
    rss = {}
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [
                pool.submit(_client, base, seed, 12 if seed < 8 else 13, statuses, lock, done) for seed in range(16)
            ]
            wait_until(lambda: len(done) >= 50 or any(f.done() and f.exception() for f in futures), "50 requests", 6000)
            rss[50] = _rss_kb(proc.pid)
            for f in futures:
                f.result()
        rss[200] = _rss_kb(proc.pid)
        assert len(statuses) == 200 and all(s < 500 for s in statuses), statuses
        assert all(s == 200 for s in statuses)  # 16 clients never fill a queue of 64: no 429 either
        wait_until(lambda: request(base, "GET", "/health")[1]["active_slots"] == 0, "every slot to be free")
        health = request(base, "GET", "/health")[1]
        assert health["queued"] == 0 and health["free_slots"] == 8
        assert rss[200] <= rss[50] * 1.05, rss  # memory does not grow with the number of requests served
    finally:
        proc.send_signal(signal.SIGTERM)
        if proc.wait(timeout=120) != 0:
            raise AssertionError(proc.stderr.read())


def test_a_second_ctrl_c_says_how_many_requests_it_cut(tiny_lm):
    """A forced quit (Ctrl-C twice) cuts the streams in flight; it said "every request in flight was answered" and
    exited 0, as a drain does."""
    proc, base = start_subprocess([str(tiny_lm.checkpoint), "--name", MODEL_ID, "--max-batch", "1"])
    try:
        body = {"model": MODEL_ID, "prompt": "The data", "max_tokens": 240, "temperature": 0, "stream": True}
        streams = [SSEStream(base, "/v1/completions", body) for _ in range(4)]  # one decoding, three waiting
        assert streams[0].next()["choices"]
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # (two signals at once are one to Python: the second comes while the first drains)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 1
        last = proc.stderr.read().strip().splitlines()[-1]
        assert last.startswith("stopped at a second Ctrl-C: ") and last.endswith(" request(s) in flight were cut")
    finally:
        if proc.poll() is None:
            proc.kill()
