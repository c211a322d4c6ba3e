"""The official openai client against the server: completions and chat, streamed or not, n, stop, seed,
logprobs; greedy output equal to generate() and to `arlm generate`; and every bad request answered with its
status and OpenAI's error body."""

from unittest.mock import ANY

import pytest

from arlm.config import GenerationConfig
from arlm.data.tokenizers import EOS
from arlm.decoding.generate import generate
from arlm.serving.jobs import choice_seed
from tests.helpers import run_cli
from tests.serving.conftest import MODEL_ID, SSEStream, request

PROMPT = "The data model of Python"


def _alone(lm, ids, **settings):
    """What generate() gives one prompt alone (generated ids, text)."""
    config = GenerationConfig(**{"strategy": "greedy", **settings})
    out = generate(lm.model, [ids], config, eos_id=lm.tokenizer.eos_id, pad_id=lm.tokenizer.pad_id)
    row = out.generated()[0]
    return row, lm.tokenizer.decode(row)


def _chat_ids(lm, messages):
    from arlm.decoding.chat import apply_chat_template

    tok = lm.tokenizer
    text = apply_chat_template(tok.chat_template, messages, eos_token=tok.token_text(tok.eos_id))
    return tok.encode(text)


def test_completions_greedy_equals_generate_streamed_or_not(live):
    client, lm = live.client(), live.lm
    ids = lm.tokenizer.encode(PROMPT)
    row, text = _alone(lm, ids, max_new_tokens=24)
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0)
    assert out.choices[0].text == text
    assert out.choices[0].finish_reason == ("stop" if row[-1] == lm.tokenizer.eos_id else "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ids), len(row))
    assert out.usage.total_tokens == len(ids) + len(row)
    chunks = list(client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == len(row)
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason
    knobs = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0, top_p=0.9)
    assert knobs.choices[0].text == text  # OpenAI's sampling knobs at temperature 0: taken, as OpenAI does, unused


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_usage_asked_for_in_a_stream_comes_once_in_the_last_chunk(live, path):
    """stream_options.include_usage: every chunk carries "usage": null but the last, which has no choices and the
    whole request's usage (OpenAI's contract; clients that add up each chunk's usage count each token once)."""
    body = {"model": MODEL_ID, "max_tokens": 6, "temperature": 0, "n": 2}
    body.update({"prompt": PROMPT} if "chat" not in path else {"messages": [{"role": "user", "content": PROMPT}]})
    whole = request(live.base_url, "POST", path, body)[1]["usage"]
    stream = SSEStream(live.base_url, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    try:
        chunks = stream.all()
    finally:
        stream.close()
    assert all("usage" in c for c in chunks) and [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole
    assert sum(c["finish_reason"] is not None for chunk in chunks for c in chunk["choices"]) == 2
    plain = SSEStream(live.base_url, path, {**body, "stream": True})  # not asked: llama.cpp's way, on the last choice
    try:
        chunks = plain.all()
    finally:
        plain.close()
    assert [c.get("usage") for c in chunks] == [None] * (len(chunks) - 1) + [whole] and chunks[-1]["choices"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_logit_bias_moves_the_choice_as_openais_does(live, path):
    """-100 on greedy's first token gives the model's second likeliest instead; +100 on a token makes greedy choose
    it every step; the log-probabilities stay the model's own."""
    import torch

    lm = live.lm
    body = {"model": MODEL_ID, "max_tokens": 3, "temperature": 0, "logprobs": 0 if "chat" not in path else True}
    if "chat" in path:
        messages = [{"role": "user", "content": PROMPT}]
        body["messages"], ids = messages, _chat_ids(lm, messages)
    else:
        body["prompt"], ids = PROMPT, lm.tokenizer.encode(PROMPT)
    with torch.no_grad():
        first, second = lm.model(torch.tensor([ids]))[0, -1].topk(2).indices.tolist()  # the model's top two
    banned = request(live.base_url, "POST", path, {**body, "max_tokens": 1, "logit_bias": {str(first): -100}})[1]
    forced = request(live.base_url, "POST", path, {**body, "logit_bias": {str(second): 100}})[1]
    plain = request(live.base_url, "POST", path, {**body, "max_tokens": 1})[1]
    text = lm.tokenizer.decode

    def content(answer):
        choice = answer["choices"][0]
        return choice["text"] if "chat" not in path else choice["message"]["content"]

    assert content(banned) == text([second]) and content(plain) == text([first])
    assert content(forced) == text([second] * 3)

    def logprob(answer):  # of the first token chosen
        found = answer["choices"][0]["logprobs"]
        return found["token_logprobs"][0] if "chat" not in path else found["content"][0]["logprob"]

    assert logprob(banned) < logprob(plain)  # the chosen token's own log-probability, not the biased one's


def test_greedy_equals_arlm_generate_on_the_command_line(live):
    out = live.client().completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=20, temperature=0)
    result = run_cli(
        "generate", str(live.lm.checkpoint), "--prompt", PROMPT, "--strategy", "greedy", "--max-new-tokens", "20"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + out.choices[0].text + "\n"


def test_chat_completions_through_the_template(live):
    client, lm = live.client(), live.lm
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is a class?"}]
    row, text = _alone(lm, _chat_ids(lm, messages), max_new_tokens=20)
    out = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=20, temperature=0)
    assert out.choices[0].message.content == text and out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens == len(row)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_completion_tokens=20, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_n_and_seed_reproducibility(live):
    client, lm = live.client(), live.lm
    ids = lm.tokenizer.encode(PROMPT)
    kwargs = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 16, "temperature": 1.0, "n": 2, "seed": 11}
    first = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.text for c in again.choices]
    # choice i is seeded choice_seed(seed, i): each equals sampling alone with that seed
    for i, text in enumerate(texts):
        seed = choice_seed(11, i)
        assert text == _alone(lm, ids, strategy="sample", temperature=1.0, max_new_tokens=16, seed=seed)[1]
    assert texts[0] != texts[1]
    other = client.completions.create(**{**kwargs, "seed": choice_seed(11, 1), "n": 1})
    assert other.choices[0].text == texts[1]
    # neighbouring seeds share no sample (with seed + i, seed 12's choice 0 was seed 11's choice 1)
    neighbour = client.completions.create(**{**kwargs, "seed": 12})
    assert not {c.text for c in neighbour.choices} & set(texts)
    streamed = list(client.completions.create(**kwargs, stream=True))
    joined = ["".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == i) for i in (0, 1)]
    assert joined == texts


def test_stop_strings_cut_the_text_streamed_or_not(live):
    client, lm = live.client(), live.lm
    _, text = _alone(lm, lm.tokenizer.encode(PROMPT), max_new_tokens=30)
    stop = text[10:13]
    assert stop and stop in text
    expected = text[: text.find(stop)]
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "zzz"])
    assert out.choices[0].text == expected and out.choices[0].finish_reason == "stop"
    chunks = client.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=30, temperature=0, stop=stop, stream=True
    )
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == expected


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_completed_by_the_last_token_allowed_ends_with_stop_not_length(live, stream):
    """max_tokens reached by the very token that completed a stop string said "length": a client's continue-loop
    would then ask for more of a reply that had ended."""
    client, lm = live.client(), live.lm
    row, text = _alone(lm, lm.tokenizer.encode(PROMPT), max_new_tokens=30)
    stop = text[10:13]
    last = next(k for k in range(1, len(row) + 1) if stop in lm.tokenizer.decode(row[:k]))  # the token completing it
    out = client.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=last, temperature=0, stop=stop, stream=stream
    )
    reasons = [c.choices[0].finish_reason for c in out if c.choices] if stream else [out.choices[0].finish_reason]
    assert reasons[-1] == "stop"
    ahead = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=last - 1, temperature=0, stop=stop)
    assert ahead.choices[0].finish_reason == "length" and stop not in ahead.choices[0].text


def test_logprobs(live):
    import math

    client = live.client()
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3  # keyed by text: tokens that are parts of one character share "\ufffd"
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen token is the likeliest
        assert top[token] == pytest.approx(value) and value <= 0

    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and math.exp(c.logprob) <= 1 for c in content)


@pytest.mark.parametrize("k", [0, 1])
def test_completion_logprobs_always_hold_the_chosen_token(live, k):
    """OpenAI's completions: top_logprobs holds the k likeliest tokens and the chosen one (up to k + 1), also when a
    sample drew a token outside the k likeliest, and logprobs 0 gives the chosen token alone."""
    client = live.client()
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=1.5, seed=3, logprobs=k)
    lp = out.choices[0].logprobs
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] >= value - 1e-6 and len(top) <= k + 1  # (by text: another token of its text may be likelier)
    if k:  # at temperature 1.5, some of the 24 draws are not the likeliest token: their entries hold two
        assert any(len(top) == 2 for top in lp.top_logprobs)


def test_a_list_of_prompts_is_answered_as_each_alone(live):
    client, lm = live.client(), live.lm
    texts = [PROMPT, "Objects are", "x"]
    ids = [lm.tokenizer.encode(t) for t in texts]
    alone = [_alone(lm, i, max_new_tokens=8) for i in ids]
    expected = [text for _, text in alone]
    out = client.completions.create(model=MODEL_ID, prompt=texts, max_tokens=8, temperature=0, n=2)
    assert [c.index for c in out.choices] == list(range(6))  # prompt p's choices at 2p, 2p + 1, as OpenAI's
    assert [c.text for c in out.choices] == [e for e in expected for _ in range(2)]
    assert out.usage.prompt_tokens == sum(map(len, ids))  # each prompt once, whatever n
    assert out.usage.completion_tokens == 2 * sum(len(row) for row, _ in alone)
    as_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=8, temperature=0)
    assert [c.text for c in as_ids.choices] == expected
    streamed = [""] * 3
    for chunk in client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=8, temperature=0, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == expected


def test_echo_puts_the_prompt_first_and_scores_its_tokens_as_a_plain_forward(live):
    import torch

    client, lm = live.client(), live.lm
    ids = lm.tokenizer.encode(PROMPT)
    text = _alone(lm, ids, max_new_tokens=5)[1]
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert out.choices[0].text == PROMPT + text
    chunks = client.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == PROMPT + text
    for stream in (False, True):  # lm-evaluation-harness's loglikelihood request: token ids, echo, logprobs 1
        body = {"model": MODEL_ID, "prompt": [ids], "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
        lp = _echo_logprobs(live, {**body, "stream": stream})
        assert lp["tokens"][: len(ids)] == [lm.tokenizer.token_text(t) for t in ids]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and len(lp["tokens"]) == len(ids) + 1
        with torch.inference_mode():  # the reference: the model's forward over the whole prompt, no cache
            reference = torch.log_softmax(lm.model(torch.tensor([ids]))[0].float(), dim=-1)  # (T, V)
        expected = [float(reference[j, ids[j + 1]]) for j in range(len(ids) - 1)]
        assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-5)
        best = [float(reference[j].max()) for j in range(len(ids) - 1)]
        assert [max(top.values()) for top in lp["top_logprobs"][1 : len(ids)]] == pytest.approx(best, abs=1e-5)
        assert lp["text_offset"][: len(ids)] == [len(lm.tokenizer.decode(ids[:j])) for j in range(len(ids))]


def _echo_logprobs(live, body: dict) -> dict:
    """The logprobs object of a one-choice completion, put together from the stream's chunks when streamed."""
    from tests.serving.conftest import SSEStream

    if not body.get("stream"):
        status, out = request(live.base_url, "POST", "/v1/completions", body)
        assert status == 200, out
        return out["choices"][0]["logprobs"]
    joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for event in SSEStream(live.base_url, "/v1/completions", body).all():
        for choice in event["choices"]:
            for key in joined:
                joined[key] += (choice["logprobs"] or {}).get(key, [])
    return joined


def test_tokenizer_endpoints_as_vllm_has_them(live):
    tok = live.lm.tokenizer
    status, info = request(live.base_url, "GET", "/tokenizer_info")
    assert status == 200 and info["eos_token"] == tok.token_text(tok.eos_id)
    assert info["chat_template"] == tok.chat_template and info["model_max_length"] == 256
    status, out = request(live.base_url, "POST", "/tokenize", {"prompt": PROMPT, "add_special_tokens": False})
    assert status == 200 and out["tokens"] == tok.encode(PROMPT) and out["count"] == len(out["tokens"])
    assert request(live.base_url, "POST", "/detokenize", {"tokens": out["tokens"]})[1] == {"prompt": PROMPT}
    marked = [tok.eos_id, *out["tokens"], tok.eos_id]  # special tokens kept, as vLLM's /detokenize keeps them
    assert request(live.base_url, "POST", "/detokenize", {"tokens": marked})[1] == {"prompt": f"{EOS}{PROMPT}{EOS}"}
    messages = [{"role": "user", "content": "hello"}]
    chat = request(live.base_url, "POST", "/tokenize", {"model": MODEL_ID, "messages": messages})[1]
    assert chat["tokens"] == _chat_ids(live.lm, messages)
    assert request(live.base_url, "POST", "/detokenize", {"tokens": [10**6]})[0] == 400
    assert request(live.base_url, "POST", "/tokenize", {"model": "other", "prompt": "x"})[0] == 404


def test_a_developer_message_is_the_system_prompt_unless_the_template_knows_the_role(live):
    """OpenAI's newer models take their system prompt as "developer" (clients such as coding agents send it): a
    template that only knows "system" gets it as "system", one that handles "developer" gets it as it is."""
    from arlm.serving.server import _role

    def turns(role):
        return [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hello"}]

    ids = request(live.base_url, "POST", "/tokenize", {"model": MODEL_ID, "messages": turns("developer")})[1]["tokens"]
    assert ids == _chat_ids(live.lm, turns("system")) != _chat_ids(live.lm, turns("developer"))
    reply = live.client().chat.completions.create(model=MODEL_ID, messages=turns("developer"), max_tokens=4)
    assert reply.usage.prompt_tokens == len(ids)
    assert _role("developer", "{% if m['role'] == 'developer' %}") == "developer" and _role("user", "") == "user"
    assert _role("developer", "You are an assistant for developers.") == "system"


@pytest.fixture(scope="module")
def keyed(tiny_lm):
    """The tiny model served with an API key, to scripts of one other web page too."""
    from tests.serving.conftest import start_in_thread

    server, stop = start_in_thread(tiny_lm, api_key="s3cret", origins=[PAGE])
    yield server
    stop()


def test_an_api_key_is_asked_of_every_api_request(keyed):
    """/v1/...: the key or 401; the page, /health, /metrics and the tokenizer's endpoints (vLLM's, outside /v1, open
    there too) answer without it."""
    import re

    import openai

    def refused_models() -> float:  # (the server is the module's: other tests' requests count too)
        metrics = request(keyed.base_url, "GET", "/metrics")[1]
        found = re.search(r'arlm_requests_total\{endpoint="/v1/models",status="401"\} ([0-9.]+)', metrics)
        return float(found[1]) if found else 0.0

    before = refused_models()
    out = keyed.client(api_key="s3cret").completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=3)
    assert out.usage.completion_tokens == 3
    with pytest.raises(openai.AuthenticationError) as refused:
        keyed.client(api_key="wrong").chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/arlm/trace")]:
        status, body = request(keyed.base_url, method, path, {"model": MODEL_ID, "prompt": "x"})
        assert status == 401 and body["error"]["message"].startswith("missing API key"), path
    assert request(keyed.base_url, "GET", "/health")[1]["auth"] is True
    assert request(keyed.base_url, "POST", "/tokenize", {"model": MODEL_ID, "prompt": "x"})[0] == 200
    assert request(keyed.base_url, "GET", "/metrics")[0] == request(keyed.base_url, "GET", "/")[0] == 200
    assert refused_models() == before + 1  # the one refused GET /v1/models above


PAGE = "http://page.example:3000"


def _headers(base_url: str, method: str, path: str, headers: dict) -> tuple[int, dict]:
    """A request's status and response headers (lower-case names)."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


@pytest.mark.parametrize(
    ("header", "status"),
    [("Bearer s3cret", 200), ("bearer s3cret", 200), ("BEARER  s3cret", 200), ("Basic s3cret", 401),
     ("Bearer s3cre", 401), ("Bearers3cret", 401), ("s3cret", 401), ("Bearer s3cret x", 401)],
)  # fmt: skip
def test_the_key_is_read_from_the_bearer_scheme_in_any_case(keyed, header, status):
    """RFC 7235: an authorization scheme is case-insensitive (a client or proxy may send "bearer"; it got 401)."""
    assert _headers(keyed.base_url, "GET", "/v1/models", {"Authorization": header})[0] == status


def test_the_pages_named_by_allow_origin_may_call_the_api_from_a_browser(keyed, live):
    """CORS: a preflight (which carries no key) is answered for the named origin and refused for another; a refusal
    for want of the key reaches the page's script readable; a server without --allow-origin sends no CORS header."""
    ask = {"Origin": PAGE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, headers = _headers(keyed.base_url, "OPTIONS", "/v1/chat/completions", ask)
    assert status == 200 and headers["access-control-allow-origin"] == PAGE
    assert "authorization" in headers["access-control-allow-headers"].lower()
    assert headers["x-request-id"].startswith("req_")  # (answered by the CORS layer, inside the id's)
    other = _headers(keyed.base_url, "OPTIONS", "/v1/chat/completions", {**ask, "Origin": "http://elsewhere"})
    assert other[0] == 400 and "access-control-allow-origin" not in other[1]
    status, headers = _headers(keyed.base_url, "POST", "/v1/completions", {"Origin": PAGE})
    assert status == 401 and headers["access-control-allow-origin"] == PAGE
    exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "www-authenticate", "x-request-id"} <= exposed  # (a 429's wait, a 401's scheme, the id)
    status, headers = _headers(live.base_url, "GET", "/v1/models", {"Origin": PAGE})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_a_stream_asks_caches_and_proxies_to_pass_each_event_on(live):
    """Cache-Control: no-cache and X-Accel-Buffering: no on server-sent events (nginx buffers a stream without them)."""
    import http.client
    import json
    from urllib.parse import urlparse

    url = urlparse(live.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 2, "stream": True}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.read().endswith(b"data: [DONE]\n\n")
    assert response.getheader("Cache-Control") == "no-cache" and response.getheader("X-Accel-Buffering") == "no"
    conn.close()


def test_models_health_and_metrics(live):
    models = live.client().models.list()
    assert live.client().models.retrieve(MODEL_ID).model_dump() == {**models.data[0].model_dump(), "created": ANY}
    assert request(live.base_url, "GET", "/v1/models/runs/other")[1]["error"]["code"] == "model_not_found"
    assert [m.id for m in models.data] == [MODEL_ID]
    status, health = request(live.base_url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["max_batch"] == 4
    status, text = request(live.base_url, "GET", "/metrics")
    for name in (
        "arlm_requests_total",
        "arlm_generated_tokens_total",
        "arlm_queue_length",
        "arlm_batch_occupancy",
        "arlm_time_to_first_token_seconds_bucket",
        "arlm_tokens_per_second",
    ):
        assert name in text
    assert 'arlm_requests_total{endpoint="/v1/models/{model}",status="404"}' in text  # (was counted as "other")


BAD = [
    ("not json", b"{nope", 400, "not valid JSON", None),
    ("unknown model", {"model": "gpt-9", "prompt": "hi"}, 404, "does not exist", "model"),
    ("missing model", {"prompt": "hi"}, 400, "missing required argument: model", "model"),
    ("n zero", {"model": MODEL_ID, "prompt": "hi", "n": 0}, 400, "n:", "n"),
    ("n too large", {"model": MODEL_ID, "prompt": "hi", "n": 17}, 400, "n:", "n"),
    ("max_tokens zero", {"model": MODEL_ID, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "max_tokens"),
    (
        "max_tokens past the context",
        {"model": MODEL_ID, "prompt": "hi", "max_tokens": 300},
        400,
        "context",
        "max_tokens",
    ),
    ("prompt past the context", {"model": MODEL_ID, "prompt": "word " * 300}, 400, "context holds 256", "prompt"),
    ("unknown argument", {"model": MODEL_ID, "prompt": "hi", "bestof": 2}, 400, "unrecognized", "bestof"),
    ("argument not served", {"model": MODEL_ID, "prompt": "hi", "best_of": 2}, 400, "best_of is not sup", "best_of"),
    ("bad type", {"model": MODEL_ID, "prompt": "hi", "temperature": "hot"}, 400, "temperature", "temperature"),
    ("temperature over 2", {"model": MODEL_ID, "prompt": "hi", "temperature": 2.5}, 400, "equal to 2", "temperature"),
    ("no draft", {"model": MODEL_ID, "prompt": "hi", "strategy": "speculative"}, 400, "no draft model", "strategy"),
    (
        "echo scored in beam search",
        {"model": MODEL_ID, "prompt": "hi", "strategy": "beam", "echo": True, "logprobs": 0},
        400,
        "echo with logprobs is not supported with strategy beam",
        "logprobs",
    ),
    ("more prompts than the queue", {"model": MODEL_ID, "prompt": ["a"] * 17}, 400, "queues at most 16", "prompt"),
    (
        "mixed prompt list",
        {"model": MODEL_ID, "prompt": ["a", 3]},
        400,
        "prompt: expected one of str, list[str]",
        "prompt",
    ),
    ("stop of numbers", {"model": MODEL_ID, "prompt": "hi", "stop": [1, 2]}, 400, "stop: expected one of", "stop"),
    ("token id", {"model": MODEL_ID, "prompt": [1, 99999]}, 400, "token ids", "prompt"),
    (
        "temperature in beam search",
        {"model": MODEL_ID, "prompt": "hi", "strategy": "beam", "temperature": 0.7},
        400,
        "temperature does nothing with strategy beam",
        "temperature",
    ),
    ("beams when sampling", {"model": MODEL_ID, "prompt": "hi", "num_beams": 2}, 400, "read by beam", "num_beams"),
    ("bias of a word", {"model": MODEL_ID, "prompt": "hi", "logit_bias": {"a": 1}}, 400, "'a' is not", "logit_bias"),
    ("bias past the vocabulary", {"model": MODEL_ID, "prompt": "hi", "logit_bias": {"99999": 1}}, 400, "not a", None),
    ("bias over 100", {"model": MODEL_ID, "prompt": "hi", "logit_bias": {"3": 101}}, 400, "[-100, 100]", None),
    (
        "bias in beam search",
        {"model": MODEL_ID, "prompt": "hi", "strategy": "beam", "logit_bias": {"3": 1}},
        400,
        "logit_bias is not supported with strategy beam",
        "logit_bias",
    ),
]


@pytest.mark.parametrize(("name", "body", "status", "message", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_their_status_and_body(live, name, body, status, message, param):
    code, answer = request(live.base_url, "POST", "/v1/completions", body)
    assert code == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"  # an unknown model too, as OpenAI's
    if param:
        assert error["param"] == param
    assert (error["code"] == "context_length_exceeded") == name.endswith("past the context")
    assert request(live.base_url, "GET", "/health")[1]["active_slots"] == 0


def test_bad_chat_requests_and_paths(live):
    code, answer = request(live.base_url, "POST", "/v1/chat/completions", {"model": MODEL_ID, "messages": []})
    assert code == 400 and answer["error"]["param"] == "messages"
    bad_role = {"model": MODEL_ID, "messages": [{"role": "robot", "content": "x"}]}
    assert request(live.base_url, "POST", "/v1/chat/completions", bad_role)[0] == 400
    code, answer = request(live.base_url, "GET", "/v1/nothing")
    assert code == 404 and "not found" in answer["error"]["message"]


def test_a_model_fine_tuned_on_chat_data_without_a_template_is_served_its_training_rendering():
    from types import SimpleNamespace

    from arlm.data.chat import encode_conversation
    from arlm.data.tokenizers import train_tokenizer
    from arlm.serving.errors import ApiError
    from arlm.serving.schemas import ChatMessage
    from arlm.serving.server import Server
    from tests.helpers import tiny_text

    tok = train_tokenizer("char", tiny_text(2), 0)  # no chat template
    scheduler = SimpleNamespace(tokenizer=tok, engine=SimpleNamespace(max_len=64))
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "ok"},
    ]
    messages = [ChatMessage(**turn) for turn in turns]
    assert Server(scheduler, "m", plain_chat=True).encode_chat(messages) == encode_conversation(turns, tok)
    with pytest.raises(ApiError, match="no chat template"):
        Server(scheduler, "m").encode_chat(messages)
