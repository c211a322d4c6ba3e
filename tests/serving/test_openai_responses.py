"""OpenAI's Responses API (/v1/responses) through the official openai client: the same text and usage as chat
completions for the same conversation, streamed events in OpenAI's order (and the client's stream helper's final
response), the token limit's incomplete response, text.format's JSON, and what this server has not refused by name.
Every answer is read by the client's own types (openai.types.responses)."""

import json

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.serving.conftest import MODEL_ID, SSEStream, wait_until

SYSTEM, ASK = "You answer in one line.", "The data model of Python"
CLOSED = {  # a closed object (no whitespace between tokens): it parses and keeps to the schema, or the test fails
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "maximum": 9, "minimum": 0}},
    "required": ["colour", "n"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}
EVENTS = TypeAdapter(ResponseStreamEvent)


def _chat(client, messages, max_tokens):
    return client.chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, max_completion_tokens=max_tokens
    )


def _same_as_chat(response, chat) -> None:
    """A response holds chat's reply, its usage and its end."""
    Response.model_validate(response.model_dump())  # every field the client's type requires, of its type
    assert response.output_text == chat.choices[0].message.content
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert usage.total_tokens == chat.usage.total_tokens and usage.output_tokens_details.reasoning_tokens == 0
    ended = "completed" if chat.choices[0].finish_reason == "stop" else "incomplete"
    assert response.status == ended and response.output[0].status == ended
    assert (response.completed_at is not None) == (ended == "completed")  # (OpenAI's: of a completed one only)
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    assert response.object == "response" and response.model == MODEL_ID and len(response.output) == 1
    assert (response.output[0].type, response.output[0].role) == ("message", "assistant")


def test_a_text_input_after_instructions_is_answered_as_chat_answers_it(live):
    client = live.client()
    chat = _chat(client, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}], 24)
    out = client.responses.create(
        model=MODEL_ID, input=ASK, instructions=SYSTEM, temperature=0, max_output_tokens=24, metadata={"k": "v"}
    )
    _same_as_chat(out, chat)
    assert (out.instructions, out.max_output_tokens, out.temperature, out.metadata) == (SYSTEM, 24, 0, {"k": "v"})
    assert out.store is False and out.tools == [] and out.error is None and out.text.format.type == "text"


def test_a_list_of_messages_and_a_returned_output_continue_a_conversation(live):
    """Messages with text parts, a developer message, and the output of an earlier response sent back as the
    client returned it: the conversation chat completions get."""
    client = live.client()
    first = client.responses.create(model=MODEL_ID, input="Hello", temperature=0, max_output_tokens=12)
    given = [
        {"role": "developer", "content": SYSTEM},
        {"role": "user", "content": "Hello"},
        *[item.model_dump() for item in first.output],
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK}]},
    ]
    out = client.responses.create(model=MODEL_ID, input=given, temperature=0, max_output_tokens=16)
    messages = [
        {"role": "developer", "content": SYSTEM},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": ASK},
    ]
    _same_as_chat(out, _chat(client, messages, 16))


@pytest.mark.parametrize("phase", ["commentary", "final_answer"])
def test_an_assistant_message_of_either_phase_continues_a_conversation(live, phase):
    """phase, OpenAI's label of an assistant message (its newer models' output messages carry it, and clients send
    it back as they got it), is taken with either of its values: "commentary" was refused."""
    client = live.client()
    given = [
        {"role": "user", "content": "Hello"},
        {"type": "message", "role": "assistant", "content": "Hi.", "phase": phase},
        {"role": "user", "content": ASK},
    ]
    out = client.responses.create(model=MODEL_ID, input=given, temperature=0, max_output_tokens=8)
    messages = [{"role": m["role"], "content": m["content"]} for m in given]
    _same_as_chat(out, _chat(client, messages, 8))


def test_truncation_auto_drops_the_first_items_that_do_not_fit(live):
    """truncation "auto" (the Agents SDK's ModelSettings(truncation="auto")) drops the input's first items, as
    OpenAI's API does, until the rest leaves max_output_tokens of the context (it was refused whatever the input);
    "disabled" refuses such an input."""
    client = live.client()
    given = [
        {"role": "user", "content": "Hello " * 400},  # (past the tiny model's 256 positions on its own)
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": ASK},
    ]
    kw = {"model": MODEL_ID, "instructions": SYSTEM, "temperature": 0, "max_output_tokens": 8}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input=given, **kw)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "input"
    out = client.responses.create(input=given, truncation="auto", **kw)
    _same_as_chat(out, _chat(client, [{"role": "system", "content": SYSTEM}, *given[1:]], 8))
    assert out.truncation == "auto"
    short = client.responses.create(input=given[1:], truncation="auto", **kw)  # (what fits: nothing dropped)
    assert short.output_text == out.output_text and short.usage == out.usage


def test_a_stream_sends_openais_events_in_order_and_the_stream_helper_reads_it(live):
    client = live.client()
    kw = {"model": MODEL_ID, "input": "Hello", "temperature": 0, "max_output_tokens": 64}
    whole = client.responses.create(**kw)
    assert whole.status == "completed"  # (the reply ends on its own: response.completed, which the helper needs)
    events = list(client.responses.create(**kw, stream=True))
    for event in events:
        EVENTS.validate_python(event.model_dump())  # each of the client's event types, with its required fields
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 1 and kinds == [
        *("response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"),
        *["response.output_text.delta"] * deltas,
        *("response.output_text.done", "response.content_part.done", "response.output_item.done"),
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-4].text == whole.output_text and events[-1].response.output_text == whole.output_text
    assert events[-1].response.usage == whole.usage and events[0].response.status == "in_progress"
    with client.responses.stream(**kw) as stream:
        final = stream.get_final_response()
    assert final.output_text == whole.output_text and final.status == "completed"


def test_the_token_limit_leaves_an_incomplete_response(live):
    client = live.client()
    chat = _chat(client, [{"role": "user", "content": ASK}], 3)
    assert chat.choices[0].finish_reason == "length"  # (the reply goes on past 3 tokens)
    out = client.responses.create(model=MODEL_ID, input=ASK, temperature=0, max_output_tokens=3)
    _same_as_chat(out, chat)
    assert out.incomplete_details.reason == "max_output_tokens" and out.usage.output_tokens == 3
    events = list(client.responses.create(model=MODEL_ID, input=ASK, temperature=0, max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.incomplete_details.reason == (
        "max_output_tokens"
    )
    assert events[-2].item.status == "incomplete" and events[-1].response.output_text == out.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_text_format_gives_json_that_keeps_to_it(live, stream):
    client = live.client()
    fmt = {"type": "json_schema", "name": "colour", "schema": CLOSED, "strict": True}
    kw = {"model": MODEL_ID, "input": "Which colour?", "temperature": 0, "max_output_tokens": 40}
    free = client.responses.create(**kw).output_text
    with pytest.raises(json.JSONDecodeError):  # the tiny model's own reply is no JSON: the grammar made it one
        json.loads(free)
    if stream:
        with client.responses.stream(**kw, text={"format": fmt}) as events:
            out = events.get_final_response()
    else:
        out = client.responses.create(**kw, text={"format": fmt})
    value = json.loads(out.output_text)
    assert set(value) == {"colour", "n"} and value["colour"] in ("red", "green", "blue") and 0 <= value["n"] <= 9
    assert out.status == "completed" and out.text.format.name == "colour" and out.text.format.schema_ == CLOSED


REFUSED = [  # argument -> the param the 400 names and a word of its message
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools", "no tools"),
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
    ({"previous_response_id": "resp_0"}, "previous_response_id", "keeps no responses"),
    ({"store": True}, "store", "keeps no responses"),
    ({"conversation": "conv_0"}, "conversation", "keeps no responses"),
    ({"background": True}, "background", "keeps no responses"),
    ({"reasoning": {"effort": "low"}}, "reasoning", "does not reason"),
    ({"reasoning": {"summary": "auto"}}, "reasoning", "does not reason"),
    ({"service_tier": "flex"}, "service_tier", "one tier"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention", "in memory only"),
    ({"include": ["reasoning.encrypted_content"]}, "include", "message.output_text.logprobs' only"),
    ({"top_logprobs": 2}, "top_logprobs", "needs include"),
    ({"prompt": {"id": "pmpt_0"}}, "prompt", "not supported"),
    ({"extra_body": {"max_tokens": 4}}, "max_tokens", "max_output_tokens"),
    ({"extra_body": {"response_format": {"type": "json_object"}}}, "response_format", "text.format"),
    ({"extra_body": {"colour": "red"}}, "colour", "unrecognized request argument: colour"),
]


def test_arguments_that_ask_for_nothing_are_taken(live):
    """reasoning {} or effort "none", service_tier "auto" / "default" and prompt_cache_retention "in_memory" ask for
    nothing this server lacks and were refused; the answer is the one without them, its reasoning null."""
    client = live.client()
    plain = client.responses.create(model=MODEL_ID, input=ASK, max_output_tokens=4, temperature=0)
    for extra in (
        {"reasoning": {}},
        {"reasoning": {"effort": "none", "summary": None}, "service_tier": "auto"},
        {"service_tier": "default", "prompt_cache_retention": "in_memory"},
    ):
        out = client.responses.create(model=MODEL_ID, input=ASK, max_output_tokens=4, temperature=0, **extra)
        assert out.output_text == plain.output_text and out.reasoning.effort is None and out.service_tier == "default"


@pytest.mark.parametrize(("given", "param", "said"), REFUSED, ids=[p for _, p, _ in REFUSED])
def test_what_this_server_has_not_is_refused_naming_it(live, given, param, said):
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().responses.create(model=MODEL_ID, input=ASK, max_output_tokens=4, **given)
    error = caught.value
    assert error.status_code == 400 and set(error.body) == {"message", "type", "param", "code"}
    assert error.param == param and said in error.message and error.type == "invalid_request_error", error.body


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_are_chats_for_the_same_conversation(live, stream):
    """include message.output_text.logprobs (with top_logprobs): each token of the text with its log-probability,
    bytes and alternatives, as chat completions' logprobs.content lists them for the same conversation; streamed, on
    the deltas of the text they spell, and whole on the text's done event."""
    client, top = live.client(), 2
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    chat = client.chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, max_completion_tokens=12, logprobs=True, top_logprobs=top
    )
    expected = [entry.model_dump() for entry in chat.choices[0].logprobs.content]
    assert len(expected) > 1 and all(len(e["top_logprobs"]) == top for e in expected)
    kw = {"model": MODEL_ID, "input": ASK, "instructions": SYSTEM, "temperature": 0, "max_output_tokens": 12}
    kw |= {"include": ["message.output_text.logprobs"], "top_logprobs": top}
    if not stream:
        out = client.responses.create(**kw)
        assert [e.model_dump() for e in out.output[0].content[0].logprobs] == expected and out.top_logprobs == top
        return
    events = list(client.responses.create(**kw, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(e.logprobs for e in deltas)  # each delta's text is its tokens'
    assert [lp.model_dump(exclude_none=True) for e in deltas for lp in e.logprobs] == expected
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert [lp.model_dump(exclude_none=True) for lp in done.logprobs] == expected
    assert [lp.model_dump() for lp in events[-1].response.output[0].content[0].logprobs] == expected


@pytest.mark.parametrize("strategy", ["beam", "prompt-lookup"])
def test_a_strategy_that_cannot_keep_to_json_refuses_text_format_by_its_name(live, strategy):
    """The lane's refusal of a JSON text.format names text.format, the argument sent (it named chat's
    response_format, an argument this endpoint refuses)."""
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().responses.create(
            model=MODEL_ID,
            input=ASK,
            max_output_tokens=4,
            text={"format": {"type": "json_object"}},
            extra_body={"strategy": strategy},
        )
    said = caught.value.body
    assert said["param"] == "text.format", said
    assert said["message"] == f"text.format is not supported with strategy {strategy}", said


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.responses.retrieve("resp_0"),
        lambda c: c.responses.delete("resp_0"),
        lambda c: c.responses.cancel("resp_0"),
        lambda c: c.responses.input_items.list("resp_0"),
        lambda c: c.responses.input_tokens.count(model=MODEL_ID, input=ASK),
    ],
    ids=["retrieve", "delete", "cancel", "input_items", "input_tokens"],
)
def test_the_responses_apis_other_paths_say_only_creation_is_served(live, call):
    """The client's other calls under /v1/responses got a bare 404 "not found: PATH"."""
    with pytest.raises(openai.NotFoundError) as caught:
        call(live.client())
    said = caught.value.body["message"]
    assert said.startswith("not found: /v1/responses/") and "keeps no responses" in said, said


def test_what_asks_for_nothing_is_taken(live):
    """store false, no tools, tool_choice "auto", no include: what clients send by default."""
    out = live.client().responses.create(
        model=MODEL_ID, input=ASK, max_output_tokens=4, store=False, tools=[], tool_choice="auto", include=[]
    )
    assert out.status in ("completed", "incomplete") and out.tool_choice == "auto"


def test_a_failure_mid_stream_ends_it_with_an_error_event(live, monkeypatch, capfd):
    """After the response has started, a bug in a step ends the stream with OpenAI's "error" event."""

    def broken():
        raise RuntimeError("a bug in the step")

    monkeypatch.setattr(live.scheduler.engine, "step", broken)
    events = list(live.client().responses.create(model=MODEL_ID, input=ASK, max_output_tokens=4, stream=True))
    monkeypatch.undo()
    capfd.readouterr()  # (the traceback the server prints)
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "error" and events[-1].message == "internal error: a bug in the step"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_client_that_goes_away_cancels_its_response(live):
    """A streamed response dropped mid-way frees its slot within one step, as a chat stream does."""
    scheduler = live.scheduler
    body = {"model": MODEL_ID, "input": ASK, "max_output_tokens": 150, "temperature": 0, "stream": True}
    scheduler.pause(after_steps=3)  # the response decodes 3 tokens, then the batch waits
    try:
        stream = SSEStream(live.base_url, "/v1/responses", body)
        assert stream.next()["type"] == "response.created"
        wait_until(lambda: scheduler.paused, "the batch to pause")
        (job,) = scheduler.running()
        stream.close()
        wait_until(lambda: job.cancelled.is_set(), "the server to notice the disconnect")
    finally:
        scheduler.resume()
    wait_until(lambda: scheduler.state()["active_slots"] == 0, "the slot to be freed")
    assert job.release_step - job.cancel_step <= 1 and job.completion_tokens < 150


@pytest.mark.parametrize("instructions", [None, SYSTEM])
def test_truncation_drops_the_fewest_first_items_in_few_encodings(instructions):
    """fit drops the same items as dropping the first one at a time until the rest fits (the definition), for every
    context from all-fits to nothing-fits, in ~log2(items) encodings instead of one an item (200 items: O(n^2)
    tokens encoded before)."""
    from arlm.serving.openai_responses import ResponsesRequest

    lengths = [3 + (i * 7) % 11 for i in range(200)]  # each item's tokens (seeded by value)
    given = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * n} for i, n in enumerate(lengths)]
    calls = []

    def encode(chat):  # a token per character, and 4 a message: a template's
        calls.append(1)
        return [0] * sum(len(m.content) + 4 for m in chat)

    def by_definition(req, context):
        chat, kept = req.chat(), 1 if instructions else 0
        while len(encode(chat)) + 8 > context and len(chat) > kept + 1:
            del chat[kept]
        return encode(chat)

    for context in (3000, 2000, 1200, 400, 60, 20, 5):
        req = ResponsesRequest(
            model=MODEL_ID, input=given, instructions=instructions, max_output_tokens=8, truncation="auto"
        )
        expected = by_definition(req, context)
        calls.clear()
        assert req.fit(encode, context) == expected
        assert len(calls) <= 2 + 8  # the whole input, the most dropped, then bisection over 200 items
    refused = ResponsesRequest(
        model=MODEL_ID, input=given, instructions=instructions, max_output_tokens=8
    )  # truncation "disabled"
    assert len(refused.fit(encode, 400)) == sum(lengths) + 4 * 200 + (len(SYSTEM) + 4 if instructions else 0)
    alone = ResponsesRequest(model=MODEL_ID, input=given[:1], instructions=instructions, truncation="auto")
    calls.clear()
    assert len(alone.fit(encode, 5)) == lengths[0] + 4 + (len(SYSTEM) + 4 if instructions else 0)  # nothing to drop
    assert len(calls) == 1  # encoded once (twice before)
