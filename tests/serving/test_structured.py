"""Structured output: chat's response_format through the official openai client. The JSON modes keep every choice
to the schema (llguidance's grammar over the served tokenizer), streamed or not, n at a time; text is a reply as it
comes; a setting the grammar cannot hold is refused in one line."""

import json

import openai
import pytest

from tests.serving.conftest import MODEL_ID, request

ASK = [{"role": "user", "content": "Which colour?"}]
COLOUR = {  # a closed object: the only free choice is the colour (no whitespace between tokens)
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "maximum": 9, "minimum": 0}},
    "required": ["colour", "n"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "colour", "schema": COLOUR, "strict": True}}


def _check(text: str) -> dict:
    value = json.loads(text)
    assert set(value) == {"colour", "n"} and value["colour"] in ("red", "green", "blue") and 0 <= value["n"] <= 9
    return value


def test_every_choice_keeps_to_the_schema_sampled_streamed_or_not(live):
    client = live.client()
    kw = {"model": MODEL_ID, "messages": ASK, "response_format": FORMAT, "max_tokens": 40}
    greedy = client.chat.completions.create(**kw, temperature=0)
    _check(greedy.choices[0].message.content)
    assert greedy.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(**kw, temperature=1.5, n=6, seed=3)
    values = [_check(c.message.content) for c in sampled.choices]
    assert len({json.dumps(v) for v in values}) > 1  # sampled among the allowed tokens, not one forced text
    stream = client.chat.completions.create(**kw, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == greedy.choices[0].message.content


def test_free_text_differs_from_the_constrained_text_and_text_format_changes_nothing(live):
    client = live.client()
    kw = {"model": MODEL_ID, "messages": ASK, "max_tokens": 40, "temperature": 0}
    free = client.chat.completions.create(**kw).choices[0].message.content
    with pytest.raises(json.JSONDecodeError):  # the tiny model's own reply is no JSON: the grammar made it one
        _check(free)
    text = client.chat.completions.create(**kw, response_format={"type": "text"}).choices[0].message.content
    assert text == free


def test_json_object_mode_gives_an_object(live):
    out = live.client().chat.completions.create(
        model=MODEL_ID, messages=ASK, response_format={"type": "json_object"}, max_tokens=120, temperature=0
    )
    assert out.choices[0].finish_reason == "stop"  # (whitespace is bounded: a model cannot pad without end)
    assert isinstance(json.loads(out.choices[0].message.content), dict)


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "json_schema is given with type json_schema", "response_format"),
        (
            {"response_format": {"type": "json_object", "json_schema": {"name": "x"}}},
            "json_schema is given with type json_schema",
            "response_format",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "response_format.type"),
        ({"response_format": FORMAT, "strategy": "beam"}, "response_format is not supported with strategy beam", None),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
            "the JSON schema cannot be used",
            "response_format",
        ),
    ],
)
def test_what_the_grammar_cannot_hold_is_refused_in_one_line(live, extra, message, param):
    body = {"model": MODEL_ID, "messages": ASK, "max_tokens": 8, **extra}
    code, answer = request(live.base_url, "POST", "/v1/chat/completions", body)
    assert code == 400, answer
    assert message in answer["error"]["message"]
    if param:
        assert answer["error"]["param"] == param
    arlm_only = {k: v for k, v in extra.items() if k != "response_format"}  # (the client sends them in extra_body)
    with pytest.raises(openai.BadRequestError):
        live.client().chat.completions.create(
            model=MODEL_ID, messages=ASK, max_tokens=8, response_format=extra["response_format"], extra_body=arlm_only
        )


def test_a_constrained_request_in_a_busy_batch_gets_what_it_gets_alone(live):
    from concurrent.futures import ThreadPoolExecutor

    client = live.client()
    kw = {"model": MODEL_ID, "messages": ASK, "response_format": FORMAT, "max_tokens": 40, "temperature": 0.9}
    alone = [client.chat.completions.create(**kw, seed=s).choices[0].message.content for s in range(3)]
    busy = {"model": MODEL_ID, "messages": [{"role": "user", "content": "talk"}], "max_tokens": 60, "temperature": 1}
    with ThreadPoolExecutor(8) as pool:
        others = [pool.submit(client.chat.completions.create, **busy, seed=s) for s in range(5)]
        mine = [pool.submit(client.chat.completions.create, **kw, seed=s) for s in range(3)]
        assert [f.result().choices[0].message.content for f in mine] == alone
        assert all(f.result().choices[0].finish_reason for f in others)


def test_completions_take_response_format_too_as_vllms_do(live):
    out = live.client().completions.create(
        model=MODEL_ID, prompt="The colour:", max_tokens=40, temperature=0, extra_body={"response_format": FORMAT}
    )
    assert out.choices[0].finish_reason == "stop"
    _check(out.choices[0].text)
