"""Continuous batching through the server: concurrent requests get exactly what each gets alone, new requests
join a running batch, a client that goes away frees its slot within one step, a full queue answers 429, and the
one-at-a-time lane (beam search, speculative decoding, prompt lookup) gives generate()'s output and its trace."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from tests.serving.conftest import MODEL_ID, SSEStream, draft_model, request, start_in_thread, wait_until

PROMPTS = [
    "A",
    "The data model",
    "Objects are Python's abstraction for data.",
    "class",
    "Every object has an identity, a type and a value. An object's identity never changes",
    "import sys",
    "for x in range(10):",
    "Names refer to objects. Names are introduced by name binding operations.",
]
LENGTHS = [30, 5, 17, 40, 9, 25, 12, 33]


def _greedy_alone(lm, prompt: str, max_new: int) -> str:
    ids = lm.tokenizer.encode(prompt)
    config = GenerationConfig(strategy="greedy", max_new_tokens=max_new)
    out = generate(lm.model, [ids], config, eos_id=lm.tokenizer.eos_id)
    return lm.tokenizer.decode(out.generated()[0])


def test_concurrent_greedy_requests_equal_each_alone(live):
    client = live.client()
    before = len(live.scheduler.history)

    def ask(i):
        kwargs = {"model": MODEL_ID, "prompt": PROMPTS[i], "max_tokens": LENGTHS[i], "temperature": 0}
        if i % 2:
            return "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices)
        return client.completions.create(**kwargs).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, range(8)))
    assert texts == [_greedy_alone(live.lm, p, n) for p, n in zip(PROMPTS, LENGTHS)]
    jobs = list(live.scheduler.history)[before:]
    assert len(jobs) == 8
    assert request(live.base_url, "GET", "/health")[1]["active_slots"] == 0


def test_a_request_joins_while_another_is_running(live):
    scheduler = live.scheduler
    scheduler.pause(after_steps=3)  # the long request decodes 3 tokens, then the batch waits
    try:
        body = {"model": MODEL_ID, "prompt": PROMPTS[0], "max_tokens": 120, "temperature": 0, "stream": True}
        long = SSEStream(live.base_url, "/v1/completions", body)
        assert long.next()["choices"]  # it is running
        wait_until(lambda: scheduler.paused, "the batch to pause")
        with ThreadPoolExecutor(1) as pool:
            body = {"model": MODEL_ID, "prompt": PROMPTS[1], "max_tokens": 5, "temperature": 0}
            short = pool.submit(request, live.base_url, "POST", "/v1/completions", body)
            wait_until(lambda: scheduler.state()["queued"] == 1, "the short request to queue")
            scheduler.resume()
            status, answer = short.result()
    finally:
        scheduler.resume()
    assert status == 200 and answer["choices"][0]["text"] == _greedy_alone(live.lm, PROMPTS[1], 5)
    rest = long.all()
    long.close()
    assert "".join(c["choices"][0]["text"] for c in rest if c.get("choices")) != ""
    first, second = [j for j in scheduler.history if j.config.max_new_tokens in (120, 5)][-2:][::-1]
    assert (first.config.max_new_tokens, second.config.max_new_tokens) == (120, 5)
    # the short one joined the batch and finished while the long one was still decoding
    assert second.admitted_step < first.finished_step and second.finished_step < first.finished_step


@pytest.mark.parametrize("prompts", [1, 2])  # 2: a list of prompts, a job each, all dropped together
def test_a_client_that_goes_away_frees_its_slot_within_one_step(live, prompts):
    scheduler = live.scheduler
    prompt = PROMPTS[2] if prompts == 1 else PROMPTS[1:3]
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True}
    scheduler.pause(after_steps=3)  # the request decodes 3 tokens, then the batch waits
    try:
        stream = SSEStream(live.base_url, "/v1/completions", body)
        assert stream.next()["choices"]
        wait_until(lambda: scheduler.paused, "the batch to pause")
        jobs = scheduler.running()
        assert len(jobs) == prompts
        stream.close()
        wait_until(lambda: all(job.cancelled.is_set() for job in jobs), "the server to notice the disconnect")
    finally:
        scheduler.resume()
    wait_until(lambda: scheduler.state()["active_slots"] == 0, "the slot to be freed")
    for job in jobs:
        assert job.release_step - job.cancel_step <= 1
        assert job.completion_tokens < 200
    metrics = request(live.base_url, "GET", "/metrics")[1]
    assert "arlm_batch_occupancy 0.0" in metrics
    assert 'arlm_sequences_finished_total{reason="cancelled"}' in metrics


def test_a_full_queue_answers_429(tiny_lm):
    """--max-queue requests may wait beside those a free slot takes at the next step (one got 429 on an idle
    server: a request counted as waiting until the batch thread's next step started it)."""
    server, stop = start_in_thread(tiny_lm, max_batch=1, max_queue=2)
    try:
        server.scheduler.pause()
        body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 3, "temperature": 0}
        with ThreadPoolExecutor(3) as pool:
            waiting = []
            for queued in (1, 2):  # the free slot's, then one waiting
                waiting.append(pool.submit(request, server.base_url, "POST", "/v1/completions", body))
                wait_until(lambda n=queued: server.scheduler.state()["queued"] == n, f"{queued} queued requests")
            two = request(server.base_url, "POST", "/v1/completions", {**body, "prompt": ["x", "y"]})
            assert two[0] == 429 and server.scheduler.state()["queued"] == 2  # two prompts, one place: neither queued
            waiting.append(pool.submit(request, server.base_url, "POST", "/v1/completions", body))
            wait_until(lambda: server.scheduler.state()["queued"] == 3, "two requests waiting")
            status, answer = request(server.base_url, "POST", "/v1/completions", body)
            server.scheduler.resume()
            assert [f.result()[0] for f in waiting] == [200, 200, 200]
        assert status == 429
        assert answer["error"]["type"] == "rate_limit_error"
        assert answer["error"]["message"] == "the queue is full (2 requests waiting); retry later"
        assert server.scheduler.state() == {**server.scheduler.state(), "queued": 0, "active_slots": 0}
    finally:
        server.scheduler.resume()
        stop()


def _send_only(base_url: str, body: dict):
    """A client's socket that has sent a completion request and reads nothing (closing it hangs up)."""
    import json
    import socket
    from urllib.parse import urlparse

    url, data = urlparse(base_url), json.dumps(body).encode()
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_lane_request_whose_client_went_away_leaves_the_queue_at_once(tiny_lm, monkeypatch):
    """Beam requests behind a long one in the lane, their clients gone: they kept their queue places (429s to requests
    still waited for, the gauge counting them) until the running one ended."""
    import threading

    server, stop = start_in_thread(tiny_lm, max_queue=2)
    scheduler, started, hold = server.scheduler, threading.Event(), threading.Event()
    run = scheduler._run_lane_job
    monkeypatch.setattr(scheduler, "_run_lane_job", lambda job: (started.set(), hold.wait(60), run(job))[-1])
    body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 3, "strategy": "beam", "num_beams": 2}
    try:
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(request, server.base_url, "POST", "/v1/completions", body)
            wait_until(started.is_set, "the lane running the first request")
            gone = [_send_only(server.base_url, body) for _ in range(2)]
            wait_until(lambda: scheduler.state()["queued"] == 2, "two requests queued")
            for sock in gone:
                sock.close()
            wait_until(lambda: scheduler.state()["queued"] == 0, "the requests gone out of the queue")
            waited = [pool.submit(request, server.base_url, "POST", "/v1/completions", body) for _ in range(2)]
            wait_until(lambda: scheduler.state()["queued"] == 2, "two requests waited for, queued")
            hold.set()
            assert [f.result()[0] for f in (running, *waited)] == [200, 200, 200]  # (not 429s)
    finally:
        hold.set()
        stop()


def test_the_queue_limit_counts_requests_not_choices(tiny_lm):
    """Free slots were subtracted as choices from a count of requests: three prompts of n=4 on four free slots (one
    request starts, two wait) made room for two more requests past --max-queue 3."""
    server, stop = start_in_thread(tiny_lm, max_batch=4, max_queue=3)
    try:
        server.scheduler.pause()
        body = {"model": MODEL_ID, "max_tokens": 2, "temperature": 0.5, "seed": 1}
        with ThreadPoolExecutor(2) as pool:
            three = pool.submit(
                request, server.base_url, "POST", "/v1/completions", {**body, "prompt": ["a", "b", "c"], "n": 4}
            )
            wait_until(lambda: server.scheduler.state()["queued"] == 3, "three requests queued")
            status, answer = request(server.base_url, "POST", "/v1/completions", {**body, "prompt": ["d", "e"]})
            assert status == 429, answer  # 2 waiting besides the one the slots take, and 2 more: 4 > 3
            one = pool.submit(request, server.base_url, "POST", "/v1/completions", {**body, "prompt": "d"})
            wait_until(lambda: server.scheduler.state()["queued"] == 4, "a third request waiting")
            server.scheduler.resume()
            assert three.result()[0] == 200 and one.result()[0] == 200
    finally:
        server.scheduler.resume()
        stop()


def test_a_request_whose_client_went_away_is_counted_as_499(tiny_lm):
    """/metrics counted requests whose clients hung up before any answer as 200s (what was sent to no one)."""
    server, stop = start_in_thread(tiny_lm, max_batch=1)
    try:
        server.scheduler.pause()
        body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 3, "temperature": 0}
        gone = [_send_only(server.base_url, {**body, "stream": stream}) for stream in (False, True)]
        wait_until(lambda: server.scheduler.state()["queued"] == 2, "two requests queued")
        for sock in gone:
            sock.close()
        server.scheduler.resume()
        assert request(server.base_url, "POST", "/v1/completions", body)[0] == 200
        counted = lambda status: f'arlm_requests_total{{endpoint="/v1/completions",status="{status}"}} '
        wait_until(lambda: counted(499) + "2.0" in request(server.base_url, "GET", "/metrics")[1], "two 499s")
        assert counted(200) + "1.0" in request(server.base_url, "GET", "/metrics")[1]
    finally:
        server.scheduler.resume()
        stop()


@pytest.fixture(scope="module")
def with_draft(tiny_lm):
    server, stop = start_in_thread(tiny_lm, draft=draft_model(tiny_lm))
    yield server
    stop()


def test_lane_strategies_equal_generate(with_draft):
    lm, client = with_draft.lm, with_draft.client()
    ids = lm.tokenizer.encode(PROMPTS[4])
    greedy = _greedy_alone(lm, PROMPTS[4], 20)
    for strategy in ("speculative", "prompt-lookup"):
        extra = {"strategy": strategy}
        out = client.completions.create(
            model=MODEL_ID, prompt=PROMPTS[4], max_tokens=20, temperature=0, extra_body=extra
        )
        assert out.choices[0].text == greedy, strategy
    beam = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=12)
    expected = generate(lm.model, [ids], beam, eos_id=lm.tokenizer.eos_id).generated()
    extra = {"strategy": "beam", "num_beams": 3}
    out = client.completions.create(model=MODEL_ID, prompt=PROMPTS[4], max_tokens=12, n=2, extra_body=extra)
    assert [c.text for c in out.choices] == [lm.tokenizer.decode(row) for row in expected]
    assert out.usage.completion_tokens == sum(len(row) for row in expected)
    stop = lm.tokenizer.decode(expected[0])[4:7]  # beam search with stops: hypotheses end at them, text cut
    stops = lambda row, generated: stop in lm.tokenizer.decode(generated)
    ended = generate(lm.model, [ids], beam, eos_id=lm.tokenizer.eos_id, should_stop=stops).generated()
    out = client.completions.create(
        model=MODEL_ID, prompt=PROMPTS[4], max_tokens=12, n=2, stop=[stop], extra_body=extra
    )
    texts = [lm.tokenizer.decode(row) for row in ended]
    assert [c.text for c in out.choices] == [t[: t.find(stop)] if stop in t else t for t in texts]
    assert ended != expected  # the stop ended hypotheses: beam search chose others than without it
    for choice, row, text in zip(out.choices, ended, texts):
        at_eos = bool(row) and row[-1] == lm.tokenizer.eos_id
        assert choice.finish_reason == ("stop" if stop in text or at_eos else "length"), text


def _logprobs_of(out, stream: bool, n: int) -> list[tuple[list, list, list]]:
    """Each choice's tokens, their log-probabilities and their top dicts, from a completion or its chunks."""
    got = [([], [], []) for _ in range(n)]
    for choice in (c for part in (out if stream else [out]) for c in part.choices):
        for listed, given in zip(got[choice.index], ("tokens", "token_logprobs", "top_logprobs")):
            listed += getattr(choice.logprobs, given) if choice.logprobs else []
    return got


def _assert_own_logprobs(lm, ids: list[int], row: list[int], got: tuple[list, list, list], k: int) -> None:
    """A choice's logprobs are the model's own: a plain forward over the prompt and the row, its k likeliest
    alternatives at each position (top dicts keyed by text: OpenAI's "bytes:\\x.." for a byte that is no character),
    then the chosen token where it is not among them."""
    import torch

    tokens, values, tops = got
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids + row]))[0, len(ids) - 1 : -1]  # (len(row), V)
    own = torch.log_softmax(logits.float(), dim=-1)
    best, best_ids = own.topk(k, dim=-1)  # (len(row), k) each
    chosen = [float(own[j, t]) for j, t in enumerate(row)]
    assert len(tokens) == len(tops) == len(row)
    assert values == pytest.approx(chosen, abs=1e-4)
    for j, top in enumerate(tops):
        listed = sorted(top.values(), reverse=True)
        assert listed[:k] == pytest.approx(best[j].tolist(), abs=1e-4)
        assert len(top) == k if row[j] in best_ids[j] else listed[k:] == pytest.approx([chosen[j]], abs=1e-4)


@pytest.mark.parametrize("stream", [False, True])
def test_beam_search_logprobs_are_the_models_own_along_each_returned_beam(live, stream):
    """OpenAI's logprobs with beam search: each returned row's tokens with the model's own log-probability (not the
    beams' summed scores) and its k likeliest alternatives there."""
    lm, client, k = live.lm, live.client(), 3
    ids = lm.tokenizer.encode(PROMPTS[4])
    beam = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10)
    rows = generate(lm.model, [ids], beam, eos_id=lm.tokenizer.eos_id).generated()
    extra = {"strategy": "beam", "num_beams": 3}
    out = client.completions.create(
        model=MODEL_ID, prompt=PROMPTS[4], max_tokens=10, n=2, logprobs=k, stream=stream, extra_body=extra
    )
    for row, got in zip(rows, _logprobs_of(out, stream, 2)):
        _assert_own_logprobs(lm, ids, row, got, k)
    greedy = _greedy_alone(lm, PROMPTS[4], 10)
    assert lm.tokenizer.decode(rows[0]) != greedy  # (a beam's tokens, not greedy's)


@pytest.mark.parametrize(("strategy", "stream"), [("speculative", False), ("prompt-lookup", True)])
def test_speculative_logprobs_are_the_models_own_at_each_token_kept(with_draft, strategy, stream):
    """OpenAI's logprobs with speculative decoding and prompt lookup, greedy (its text, greedy's) and sampled: each
    token with the target's own log-probability where its verification kept it, and its k likeliest there."""
    lm, client, k = with_draft.lm, with_draft.client(), 2
    ids = lm.tokenizer.encode(PROMPTS[4])
    for settings in ({"temperature": 0}, {"temperature": 1.0, "seed": 5}):
        config = GenerationConfig(strategy=strategy, max_new_tokens=16, **settings)
        draft = with_draft.scheduler.draft
        row = generate(lm.model, [ids], config, eos_id=lm.tokenizer.eos_id, draft=draft).generated()[0]
        extra = {"strategy": strategy}
        out = client.completions.create(
            model=MODEL_ID, prompt=PROMPTS[4], max_tokens=16, logprobs=k, stream=stream, extra_body=extra, **settings
        )
        (got,) = _logprobs_of(out, stream, 1)
        _assert_own_logprobs(lm, ids, row, got, k)
        if not settings["temperature"]:
            assert lm.tokenizer.decode(row) == _greedy_alone(lm, PROMPTS[4], 16)


def test_trace_streams_tokens_verifications_and_beams(with_draft):
    base = with_draft.base_url
    body = {"model": MODEL_ID, "prompt": PROMPTS[4], "max_tokens": 12, "temperature": 0}
    events = SSEStream(base, "/v1/arlm/trace", body).all()
    assert events[0] == {
        "type": "start",
        "strategy": "greedy",
        "prompt_tokens": len(with_draft.lm.tokenizer.encode(PROMPTS[4])),
        "n": 1,
    }
    tokens = [e for e in events if e["type"] == "token"]
    assert len(tokens) == 12 and all(len(t["top"]) == 5 and 0 < t["prob"] <= 1 for t in tokens)
    assert tokens[0]["prob"] == pytest.approx(tokens[0]["top"][0]["prob"])
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] == 12

    spec = SSEStream(base, "/v1/arlm/trace", {**body, "strategy": "speculative", "num_draft_tokens": 3}).all()
    verifies = [e for e in spec if e["type"] == "verify"]
    assert verifies and all(0 <= v["accepted"] <= len(v["drafted"]) for v in verifies)
    assert {v["source"] for v in verifies} == {"model"}
    kept = sum(v["accepted"] + 1 for v in verifies)
    assert kept >= 12 and len([e for e in spec if e["type"] == "token"]) == 12

    beams = SSEStream(base, "/v1/arlm/trace", {**body, "strategy": "beam", "num_beams": 3}).all()
    steps = [e for e in beams if e["type"] == "beams"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert all(len(s["running"]) == 3 for s in steps[:-1]) and steps[-1]["finished"]


def test_a_server_with_a_bfloat16_cache_answers_as_generate_over_one(tiny_lm):
    """`arlm serve --kv-dtype bfloat16`: the slots are bfloat16, and both the batch (greedy, concurrent) and the lane
    (prompt lookup) give generate()'s tokens over a bfloat16 cache, which differ from a float32 cache's here."""
    import torch

    server, stop = start_in_thread(tiny_lm, kv_dtype="bfloat16")
    try:
        assert server.scheduler.engine.cache.buffers.k.dtype == torch.bfloat16
        client, lm = server.client(), tiny_lm

        def alone(prompt: str, strategy: str, kv: str) -> str:
            config = GenerationConfig(strategy=strategy, temperature=0, max_new_tokens=40, kv_dtype=kv)
            out = generate(lm.model, [lm.tokenizer.encode(prompt)], config, eos_id=lm.tokenizer.eos_id)
            return lm.tokenizer.decode(out.generated()[0])

        def ask(i: int, strategy: str = "greedy") -> str:
            kwargs = {"model": MODEL_ID, "prompt": PROMPTS[i], "max_tokens": 40, "temperature": 0}
            return client.completions.create(**kwargs, extra_body={"strategy": strategy}).choices[0].text

        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(ask, range(4)))
        assert texts == [alone(PROMPTS[i], "greedy", "bfloat16") for i in range(4)]
        assert texts != [alone(PROMPTS[i], "greedy", "auto") for i in range(4)]  # the cache's precision tells
        assert ask(4, "prompt-lookup") == alone(PROMPTS[4], "prompt-lookup", "bfloat16")
    finally:
        stop()
