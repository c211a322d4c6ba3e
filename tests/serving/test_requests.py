"""What clients send beyond the happy path: OpenAI's nullable arguments as null, an assistant message echoed back as
the SDK returned it, seeds at the ends of their range, arguments of the wrong type or not finite, many stop
strings; each is answered or refused with OpenAI's error body, and none stops the server (tests/serving/test_app.py
holds the main table of refusals)."""

import json
import threading
import time

import pytest

from arlm.config import GenerationConfig
from arlm.errors import ArlmError
from arlm.serving.jobs import Job
from tests.serving.conftest import MODEL_ID, request

PROMPT = "Objects are Python's"


def _completion(live, **body) -> tuple[int, dict]:
    return request(live.base_url, "POST", "/v1/completions", {"model": MODEL_ID, "prompt": PROMPT, **body})


def test_null_arguments_take_their_defaults(live):
    plain = _completion(live, max_tokens=6, seed=3)
    nulls = dict.fromkeys(["temperature", "top_p", "n", "stream", "presence_penalty", "frequency_penalty", "echo"])
    status, answer = _completion(live, max_tokens=6, seed=3, logprobs=None, top_k=-1, **nulls)
    assert status == 200, answer
    assert answer["choices"][0]["text"] == plain[1]["choices"][0]["text"]  # the defaults: temperature 1, seeded
    chat = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    status, answer = request(live.base_url, "POST", "/v1/chat/completions", {**chat, "logprobs": None, "n": None})
    assert status == 200, answer
    status, _ = _completion(live, max_tokens=2, metadata={"team": "a"}, store=False, user="u1")
    assert status == 200  # OpenAI's bookkeeping arguments: accepted, nothing stored


def test_an_assistant_message_as_the_sdk_returned_it_continues_the_conversation(live):
    client = live.client()
    first = [{"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model=MODEL_ID, messages=first, max_tokens=5, temperature=0)
    echoed = reply.choices[0].message.model_dump()  # refusal, annotations, tool_calls, audio, function_call: null
    assert {"refusal", "tool_calls", "function_call", "audio"} <= set(echoed)
    follow_up = [*first, echoed, {"role": "user", "content": "and?"}]
    again = client.chat.completions.create(model=MODEL_ID, messages=follow_up, max_tokens=5, temperature=0)
    as_text = [*first, {"role": "assistant", "content": echoed["content"]}, {"role": "user", "content": "and?"}]
    same = client.chat.completions.create(model=MODEL_ID, messages=as_text, max_tokens=5, temperature=0)
    assert again.choices[0].message.content == same.choices[0].message.content
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    with_call = [*first, {"role": "assistant", "content": None, "tool_calls": call}]
    status, answer = request(
        live.base_url, "POST", "/v1/chat/completions", {"model": MODEL_ID, "messages": with_call, "max_tokens": 2}
    )
    assert status == 400 and "tool_calls are not supported" in answer["error"]["message"]


REFUSED = [  # a request OpenAI's API refuses, or a setting that would do nothing -> the param named
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # (without stream: answered as if absent)
    ({"prompt": []}, "prompt"),  # (generated from BOS)
    ({"prompt": [[1, 2], []]}, "prompt"),
    ({"temperature": 1e-8}, "temperature"),  # (refused with param null)
    ({"temperature": 0, "top_k": 5}, "top_k"),  # arlm's own knobs at temperature 0 did nothing, silently
    ({"temperature": 0, "min_p": 0.1}, "min_p"),
]


@pytest.mark.parametrize(("body", "param"), REFUSED)
def test_what_would_be_answered_as_something_else_is_refused_naming_its_param(live, body, param):
    status, answer = _completion(live, max_tokens=2, **body)
    assert status == 400 and answer["error"]["param"] == param, answer


def test_openais_newer_request_fields_are_taken_as_user_is(live):
    """safety_identifier and prompt_cache_key (OpenAI's successors of user) and stream_options.include_obfuscation
    were refused as unrecognized, while user was accepted."""
    extra = {"safety_identifier": "u1", "prompt_cache_key": "k", "user": "u1"}
    assert _completion(live, max_tokens=2, **extra)[0] == 200
    streamed = {"stream": True, "stream_options": {"include_usage": True, "include_obfuscation": False}}
    assert _completion(live, max_tokens=2, **streamed)[0] == 200
    assert _completion(live, max_tokens=2, temperature=0, top_p=0.5)[0] == 200  # (top_p: sent by every client)


def test_openais_arguments_at_values_that_ask_for_nothing_are_taken(live):
    """service_tier "auto" / "default", prompt_cache_retention "in_memory" and reasoning_effort "none" ask for nothing
    this server lacks (one tier, prompts in memory, no hidden reasoning) and were refused by name all the same; the
    official client sends them as given; the answer is the one without them."""
    client, messages = live.client(), [{"role": "user", "content": "hi"}]
    plain = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3, temperature=0)
    for extra in (
        {"service_tier": "auto"},
        {"service_tier": "default", "prompt_cache_retention": "in_memory", "reasoning_effort": "none"},
    ):
        out = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3, temperature=0, **extra)
        assert out.choices[0].message.content == plain.choices[0].message.content
    out = client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2, extra_body={"service_tier": "auto"})
    assert out.choices[0].finish_reason == "length"
    status, answer = request(  # (the Responses API's reasoning {} is no argument of chat's)
        live.base_url, "POST", "/v1/chat/completions", {"model": MODEL_ID, "messages": messages, "reasoning": {}}
    )
    assert status == 400 and answer["error"]["message"] == "unrecognized request argument: reasoning", answer


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool calling is not supported"),
        ({"tool_choice": "auto"}, "tool calling is not supported"),
        ({"parallel_tool_calls": False}, "tool calling is not supported"),
        ({"reasoning_effort": "low"}, 'reasoning_effort other than "none" is not supported'),
        ({"modalities": ["text"]}, "modalities is not supported"),
        ({"service_tier": "priority"}, 'service_tier other than "auto" or "default" is not supported'),
        ({"prompt_cache_retention": "24h"}, 'prompt_cache_retention other than "in_memory" is not supported'),
    ],
)
def test_openais_arguments_this_server_has_not_are_refused_saying_so(live, body, said):
    """tools, reasoning_effort, ...: OpenAI's own arguments were refused as "unrecognized request argument", which
    reads as a typo in the client (LangChain's bind_tools, litellm's tools=): the refusal says the server has not that
    feature, with OpenAI's 400 body naming the argument."""
    messages = [{"role": "user", "content": "hi"}]
    status, answer = request(
        live.base_url,
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ID, "messages": messages, "max_tokens": 2, **body},
    )
    (param,) = body
    assert status == 400 and answer["error"]["param"] == param and said in answer["error"]["message"], answer


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/responses", "not found: /responses; the API is under /v1 (base URL http://HOST:PORT/v1)"),
        ("/chat/completions", "not found: /chat/completions; the API is under /v1 (base URL http://HOST:PORT/v1)"),
        ("/v1/nothing", "not found: /v1/nothing"),
    ],
)
def test_a_path_not_served_says_where_to_go(live, path, said):
    """A client's base URL without /v1 got a bare 404 "not found: PATH"."""
    status, answer = request(live.base_url, "POST", path, {"model": MODEL_ID})
    assert status == 404 and answer["error"]["message"].startswith(said), answer


PARTS = [  # a message's content parts -> the error's param and message
    ([{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
     "messages.0.content.0.cache_control", "unrecognized request argument: messages.0.content.0.cache_control"),
    ([{"type": "text"}], "messages.0.content.0.text", "missing required argument: messages.0.content.0.text"),
    ([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}], "messages.0",
     "content parts of type 'image_url' are not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "param", "message"), PARTS)
def test_a_content_part_is_refused_naming_what_is_wrong_with_it(live, content, param, message):
    """An extra key or a missing text was reported at "messages.0.content.str", a path not in the request, as
    "should be a valid string"; an image part as a malformed text part."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    status, answer = request(live.base_url, "POST", "/v1/chat/completions", body)
    assert status == 400 and answer["error"]["param"] == param and message in answer["error"]["message"], answer


def test_a_message_name_is_refused_a_reply_says_refusal_null_and_a_405_names_what_is_allowed(live):
    """A message's name was taken and dropped (who said what, lost silently); a reply's message lacked OpenAI's
    "refusal": null, which code reading the raw JSON looks up; a 405 had no Allow header."""
    import http.client
    from urllib.parse import urlparse

    named = [{"role": "user", "content": "hi", "name": "bob"}]
    body = {"model": MODEL_ID, "messages": named, "max_tokens": 2}
    status, answer = request(live.base_url, "POST", "/v1/chat/completions", body)
    assert status == 400 and "name is not supported" in answer["error"]["message"], answer
    body["messages"] = [{"role": "user", "content": "hi"}]
    status, answer = request(live.base_url, "POST", "/v1/chat/completions", body)
    assert status == 200 and answer["choices"][0]["message"]["refusal"] is None
    url = urlparse(live.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", "/v1/chat/completions")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    conn.close()


def test_seeds_at_the_ends_of_the_64_bit_range(live):
    for seed in (-(2**63), 2**63 - 1):
        status, answer = _completion(live, max_tokens=4, seed=seed, n=2)  # (choice 1: its own seed, choice_seed)
        assert status == 200, answer
        again = _completion(live, max_tokens=4, seed=seed, n=2)[1]
        assert [c["text"] for c in again["choices"]] == [c["text"] for c in answer["choices"]]
    for seed in (2**64, -(2**63) - 1):
        status, answer = _completion(live, max_tokens=4, seed=seed)
        assert status == 400 and answer["error"]["param"] == "seed", answer
    assert live.scheduler.alive() and _completion(live, max_tokens=2)[0] == 200


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"max_tokens": "8"}, "max_tokens", "valid integer"),
        ({"temperature": float("nan")}, "temperature", "finite number"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty", "finite number"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop", "at most 16 stop strings"),
        ({"stop": "x" * 257}, "stop", "at most 256 characters"),
        ({"stream": "yes"}, "stream", "valid boolean"),
    ],
)
def test_arguments_of_the_wrong_kind_are_refused_by_name(live, body, param, message):
    status, answer = _completion(live, **{"max_tokens": 2, **body})
    assert status == 400 and answer["error"]["param"] == param and message in answer["error"]["message"], answer


def test_bodies_that_are_not_a_json_object(live):
    """(sent raw: the stdlib client of conftest sends JSON)"""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(live.base_url)
    for body, content_type in ((b"", "application/json"), (b"prompt=hi", "application/x-www-form-urlencoded")):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        assert response.status == 400 and "must be a JSON object (Content-Type: application/json)" in text, text


def test_the_model_card_is_the_same_at_every_call(live):
    first = request(live.base_url, "GET", "/v1/models")[1]["data"][0]
    time.sleep(1.1)  # ("created" counts seconds)
    assert request(live.base_url, "GET", "/v1/models")[1]["data"][0] == first


def test_chat_logprobs_give_the_bytes_of_tokens_that_are_parts_of_a_character(live):
    client = live.client()
    messages = [{"role": "user", "content": "日本 — ça"}]
    out = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert all(entry.bytes is not None and all(t.bytes is not None for t in entry.top_logprobs) for entry in content)
    raw = b"".join(bytes(entry.bytes) for entry in content)
    assert raw.decode("utf-8", errors="replace") == out.choices[0].message.content  # the text is those bytes
    assert any(entry.token == "\ufffd" for entry in content)  # (the case at hand: tokens inside a character)


def test_an_echoed_prompts_offsets_are_where_its_tokens_text_begins(live, tiny_lm):
    """A character over several tokens: the prompt's offsets summed each token's own text (a U+FFFD each), past the
    prompt's end and then back; each is where its token's text begins (inside a character: where that begins)."""
    tok, prompt = tiny_lm.tokenizer, "日本 — ça va"
    ids = tok.encode(prompt)
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
    status, out = _completion(live, **body)
    assert status == 200, out
    offsets = out["choices"][0]["logprobs"]["text_offset"]
    assert offsets == sorted(offsets) and offsets[-1] == len(prompt)  # (the generated token, after the prompt)
    whole = [j for j in range(len(ids)) if not tok.decode(ids[:j]).endswith("\ufffd")]  # tokens starting a character
    assert len(whole) < len(ids)  # (the case at hand)
    for j in range(len(ids)):
        begins = max(k for k in whole if k <= j)  # the token its character began with
        assert offsets[j] == len(tok.decode(ids[:begins])), j


def test_a_prompt_holding_special_tokens_is_echoed_with_them_and_its_offsets_point_into_that_text(live, tiny_lm):
    """Its offsets were counted over the text without the special tokens (9 of 10 wrong for a ChatML prompt), and the
    same prompt sent as ids was echoed without them: one prompt, two echoes."""
    tok = tiny_lm.tokenizer
    special = tok.token_text(tok.eos_id)
    prompt = f"to be{special} or not{special}"
    ids = tok.encode(prompt)
    assert ids.count(tok.eos_id) == 2  # (read as special tokens)
    echoes = []
    for given in (prompt, ids):
        status, out = _completion(live, prompt=given, max_tokens=1, temperature=0, echo=True, logprobs=1)
        assert status == 200, out
        choice = out["choices"][0]
        text, logprobs = choice["text"], choice["logprobs"]
        for token, offset in list(zip(logprobs["tokens"], logprobs["text_offset"]))[: len(ids)]:
            assert text[offset : offset + len(token)] == token
        echoes.append(text[: len(prompt)])
    assert echoes == [prompt, prompt]


FAILURES = [  # what a choice's start raises -> the error event its request gets
    (RuntimeError("broken grammar"), (500, "internal error: broken grammar", None, None)),
    (ArlmError("no such grammar", param="response_format"), (400, "no such grammar", "response_format", None)),
]


@pytest.mark.parametrize(("failure", "answer"), FAILURES, ids=["bug", "refusal"])
def test_a_request_that_fails_to_start_fails_alone(live, failure, answer):
    """A choice that cannot join the batch (here: its grammar breaks) answers its request with a 500 (a bug) or a
    400 naming the argument (arlm's refusal); the requests beside it and after it are served, and no slot is lost."""
    scheduler = live.scheduler

    class Broken:
        def matcher(self):
            raise failure

    events: dict[str, list[dict]] = {"bad": [], "good": []}
    done = {name: threading.Event() for name in events}

    def emit(name):
        def put(event):
            events[name].append(event)
            if event["type"] in ("done", "error"):
                done[name].set()

        return put

    ids = live.lm.tokenizer.encode(PROMPT)
    config = GenerationConfig(strategy="greedy", max_new_tokens=4)
    bad = Job(prompt=ids, config=config, emit=emit("bad"), n=2, grammar=Broken())
    good = Job(prompt=ids, config=config, emit=emit("good"))
    scheduler.submit(bad, good)
    assert done["bad"].wait(60) and done["good"].wait(60)
    status, message, param, code = answer
    assert events["bad"][-1] == {"type": "error", "status": status, "message": message, "param": param, "code": code}
    assert events["good"][-1]["type"] == "done" and events["good"][-1]["usage"]["completion_tokens"] == 4
    assert scheduler.alive() and _completion(live, max_tokens=2)[0] == 200
    state = scheduler.state()
    assert state["free_slots"] == state["max_batch"] and state["queued"] == 0


def test_health_is_503_once_a_decoding_thread_is_gone(live, monkeypatch):
    assert request(live.base_url, "GET", "/health")[0] == 200
    monkeypatch.setattr(live.scheduler, "alive", lambda: False)
    status, health = request(live.base_url, "GET", "/health")
    assert status == 503 and health["status"] == "error"


def _chunked(base_url: str, body: bytes, piece: int = 1000) -> tuple[int, dict]:
    """POST a completion's body with no Content-Length, in chunks (Transfer-Encoding: chunked)."""
    import http.client
    import json
    from urllib.parse import urlparse

    url = urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    chunks = (body[i : i + piece] for i in range(0, len(body), piece))
    conn.request(
        "POST", "/v1/completions", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True
    )
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_a_body_over_the_limit_gets_413_declared_or_chunked(tiny_lm):
    from tests.serving.conftest import start_in_thread

    server, stop = start_in_thread(tiny_lm, max_body=4096)
    try:
        small = {"model": MODEL_ID, "prompt": "x", "max_tokens": 1}
        large = {"model": MODEL_ID, "prompt": "x" * 5000, "max_tokens": 1}
        assert request(server.base_url, "POST", "/v1/completions", small)[0] == 200
        assert _chunked(server.base_url, json.dumps(small).encode(), piece=7)[0] == 200  # the body handed on whole
        for status, answer in (
            request(server.base_url, "POST", "/v1/completions", large),
            _chunked(server.base_url, json.dumps(large).encode()),
        ):
            assert status == 413 and "over the server's limit of 4096 bytes" in answer["error"]["message"]
        assert request(server.base_url, "GET", "/health")[0] == 200
    finally:
        stop()


def test_a_model_whose_logits_are_not_numbers_answers_in_one_line(tiny_lm):
    """A model whose weights hold NaN: each request, batched or in the lane, gets the reason (sampling raised
    inside torch.multinomial, greedy streamed token 0), and the server keeps serving."""
    import copy
    import dataclasses

    import torch

    from tests.serving.conftest import start_in_thread

    broken = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        broken.tok_emb.weight.fill_(float("nan"))  # (the Linears are packed for the kernels)
    server, stop = start_in_thread(dataclasses.replace(tiny_lm, model=broken))
    try:
        for extra in ({"temperature": 0}, {"temperature": 1}, {"strategy": "beam", "temperature": 0}):
            body = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 3, **extra}
            status, answer = request(server.base_url, "POST", "/v1/completions", body)
            assert status == 400 and "logits after the prompt are NaN or infinite" in answer["error"]["message"]
        assert server.scheduler.alive()
    finally:
        stop()


def _chat(client, **kw):
    messages = [{"role": "user", "content": "hi"}]
    return client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0, logprobs=True, **kw)


def test_logprobs_list_the_tokens_of_the_text_and_not_the_end_of_turn(live, tiny_lm):
    """OpenAI's logprobs.content covers the reply's content: the end-of-turn token that ends a reply is no text, so
    it has no entry (it had one, `bytes` and all, in every reply that ended by it), streamed or not."""
    client, eos = live.client(), tiny_lm.tokenizer.eos_id
    ended = _chat(client, max_tokens=8, logit_bias={str(eos): 100})  # the end of turn comes first
    assert ended.choices[0].finish_reason == "stop" and ended.choices[0].message.content == ""
    assert ended.choices[0].logprobs.content == [] and ended.usage.completion_tokens == 1
    chunks = list(_chat(client, max_tokens=8, logit_bias={str(eos): 100}, stream=True))
    assert not [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]


def test_logprobs_end_where_a_stop_string_cuts_the_text(live, tiny_lm):
    """A stop string ends the text before it: its tokens have no entries, except one the stop string begins inside of
    (its text is partly in the reply); completions' text_offset stays within the text."""
    client, tok = live.client(), tiny_lm.tokenizer
    words = {str(i): -100 for i in range(tok.vocab_size) if not tok.piece_bytes(i).isalpha()}  # the untrained model:
    free = _chat(client, max_tokens=24, logit_bias=words).choices[0].logprobs.content  # letters only, no end of turn
    k = next(j for j, entry in enumerate(free[2:], 2) if len(entry.token) >= 2)
    stop = free[k].token[1:] + free[k + 1].token  # begins inside token k
    for stream in (False, True):
        if stream:
            chunks = list(_chat(client, max_tokens=24, stop=stop, stream=True, logit_bias=words))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        else:
            out = _chat(client, max_tokens=24, stop=stop, logit_bias=words).choices[0]
            content, entries = out.message.content, out.logprobs.content
        assert content == "".join(e.token for e in free[:k]) + free[k].token[0]
        assert [e.token for e in entries] == [e.token for e in free[: k + 1]]
    body = {"max_tokens": 24, "temperature": 0, "logprobs": 1, "logit_bias": words}
    said = _completion(live, **body)[1]["choices"][0]["logprobs"]["tokens"]
    k = next(j for j, token in enumerate(said[2:], 2) if len(token) >= 2)
    status, answer = _completion(live, stop=said[k][1:] + said[k + 1], **body)  # completions: the same rule
    assert status == 200, answer
    choice = answer["choices"][0]
    offsets, tokens = choice["logprobs"]["text_offset"], choice["logprobs"]["tokens"]
    assert choice["finish_reason"] == "stop" and all(o < len(choice["text"]) for o in offsets)
    assert offsets == [sum(map(len, tokens[:j])) for j in range(len(tokens))]  # where each token's text begins
    assert "".join(tokens).startswith(choice["text"]) and len("".join(tokens[:-1])) < len(choice["text"])


LONE = {  # endpoint -> a body whose text holds half of 🙂's escape, as a script's string cut inside the emoji sends
    "/v1/completions": ({"model": MODEL_ID, "prompt": "a \ud83d"}, "prompt"),
    "/v1/chat/completions": (
        {"model": MODEL_ID, "messages": [{"role": "user", "content": "\ude42"}]},
        "messages.0.content",
    ),
    "/v1/arlm/trace": ({"model": MODEL_ID, "prompt": "x", "stop": ["\ud83d"]}, "stop.0"),
    "/tokenize": ({"prompt": "\ud83d\ud83d"}, "prompt"),
}


@pytest.mark.parametrize("path", list(LONE))
def test_a_lone_surrogate_is_refused_as_no_text(live, path):
    """JSON may escape half a character (\\ud83d); that is no text, which no tokenizer encodes: a 400 naming where
    it is (it was a 500 with a plain-text body, uncounted by /metrics, which OpenAI's SDKs retry)."""
    body, param = LONE[path]
    status, answer = request(live.base_url, "POST", path, body)
    assert status == 400, answer
    assert answer["error"]["param"] == param and "holds a lone surrogate" in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


def test_a_stop_string_holding_a_special_tokens_text_among_other_text_is_refused(live):
    """A reply's text never holds a special token, so `x<|endoftext|>` could never stop anything: a 400 naming stop
    (the token's text alone stops at its id)."""
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for path, extra in (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", chat)):
        body = {"model": MODEL_ID, "max_tokens": 4, "stop": ["ok", "x<|endoftext|>"], **extra}
        status, answer = request(live.base_url, "POST", path, body)
        assert status == 400 and answer["error"]["param"] == "stop", answer
        assert "holds the special token <|endoftext|> among other text" in answer["error"]["message"]
    alone = {"model": MODEL_ID, "max_tokens": 4, "stop": "<|endoftext|>", "prompt": "x"}
    assert request(live.base_url, "POST", "/v1/completions", alone)[0] == 200


def test_a_bug_answers_500_with_openais_body_and_is_counted(live, monkeypatch):
    """An exception no handler expected: OpenAI's error body (it was Starlette's plain text) and a 500 in /metrics."""

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(live.scheduler.tokenizer, "encode", broken)
    status, answer = request(live.base_url, "POST", "/tokenize", {"prompt": "hello"})
    monkeypatch.undo()
    assert status == 500 and answer["error"]["type"] == "server_error", answer
    assert answer["error"]["message"] == "internal error: a bug"
    metrics = request(live.base_url, "GET", "/metrics")[1]
    assert 'arlm_requests_total{endpoint="/tokenize",status="500"} 1.0' in metrics


def _chat_status(live, messages, **body) -> tuple[int, dict]:
    return request(live.base_url, "POST", "/v1/chat/completions", {"model": MODEL_ID, "messages": messages, **body})


@pytest.mark.parametrize("message", [{"role": "user"}, {"role": "user", "content": None}, {"role": "system"}])
def test_a_message_without_content_is_refused_but_an_assistants(live, message):
    """OpenAI's: content is required of a system, developer or user message (it was templated as empty, 200)."""
    status, answer = _chat_status(live, [message], max_tokens=2)
    assert status == 400 and answer["error"]["param"] == "messages.0", answer
    assert f"a {message['role']} message needs its content" in answer["error"]["message"]
    said = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "refusal": "no"}]
    assert _chat_status(live, [*said, {"role": "user", "content": "ok"}], max_tokens=2)[0] == 200


def test_a_chat_past_the_context_names_the_arguments_it_sent(live):
    """A conversation too long is refused naming `messages` (chat has no `prompt`), and a max_completion_tokens
    past the context names max_completion_tokens (the request sent no max_tokens)."""
    status, answer = _chat_status(live, [{"role": "user", "content": "word " * 400}], max_tokens=2)
    assert status == 400 and answer["error"]["param"] == "messages", answer
    assert answer["error"]["code"] == "context_length_exceeded"
    status, answer = _chat_status(live, [{"role": "user", "content": "hi"}], max_completion_tokens=5000)
    assert status == 400 and answer["error"]["param"] == "max_completion_tokens", answer
    assert "max_completion_tokens is 5000" in answer["error"]["message"]
    status, answer = _chat_status(live, [{"role": "user", "content": "hi"}], max_tokens=5000)
    assert status == 400 and answer["error"]["param"] == "max_tokens", answer
