"""x-request-id: on every answer as OpenAI's API sends it (the official client's `_request_id`), a caller's own id
echoed where it is well-formed, and a bug's traceback on stderr headed by the ids of the requests it failed."""

import http.client
import json
import re
from urllib.parse import urlparse

import pytest

from tests.serving.conftest import MODEL_ID

NEW_ID = re.compile(r"req_[0-9a-f]{32}")


def _post(base_url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A POST's status, headers (lower-case names) and body."""
    url = urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, raw


def test_the_official_client_reads_a_new_id_on_every_answer(live):
    """Each answer its own `req_...` id, read by the openai client as OpenAI's own; a refusal carries one too."""
    import openai

    client = live.client()
    first = client.completions.create(model=MODEL_ID, prompt="x", max_tokens=2)
    chat = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    ids = [first._request_id, chat._request_id]
    with client.completions.with_streaming_response.create(model=MODEL_ID, prompt="x", max_tokens=2, stream=True) as s:
        ids.append(s.headers["x-request-id"])
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL_ID, prompt="x", max_tokens=2, temperature=-1)
    ids.append(refused.value.request_id)
    assert all(NEW_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids), ids


@pytest.mark.parametrize(
    ("given", "echoed"),
    [("trace-7f3a.1:2/b+c=", True), ("a" * 128, True), ("a" * 129, False), ("two words", False), ("é", False)],
)
def test_a_callers_id_is_echoed_where_it_is_a_short_printable_token(live, given, echoed):
    """A proxy's or client's own id comes back (so logs on both sides meet); anything else is replaced by a new id."""
    body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 1}
    raw = given.encode().decode("latin-1")  # (http.client sends a header's str as latin-1: these are its UTF-8 bytes)
    status, headers, _ = _post(live.base_url, "/v1/completions", body, {"X-Request-Id": raw})
    answered = headers["x-request-id"]
    assert status == 200 and (answered == given if echoed else NEW_ID.fullmatch(answered)), answered


def test_a_bug_in_a_step_names_the_requests_it_failed_on_stderr(live, monkeypatch, capfd):
    """A step that raises fails the requests in the batch with a 500; stderr says which (their ids) above the
    traceback, so a user's x-request-id finds the server's log."""
    engine = live.scheduler.engine

    def broken():
        raise RuntimeError("a bug in the step")

    monkeypatch.setattr(engine, "step", broken)
    body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 4}
    status, headers, raw = _post(live.base_url, "/v1/completions", body, {"X-Request-Id": "user-report-42"})
    monkeypatch.undo()
    assert status == 500 and json.loads(raw)["error"]["message"] == "internal error: a bug in the step"
    assert headers["x-request-id"] == "user-report-42"
    err = capfd.readouterr().err
    assert "arlm serve: internal error in request user-report-42:" in err and "RuntimeError: a bug in the step" in err
    assert _post(live.base_url, "/v1/completions", body)[0] == 200  # (the server serves on)


def test_a_bug_in_the_app_names_its_request_on_stderr(live, monkeypatch, capfd):
    """An exception in a route (outside the scheduler) is named the same way."""

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in a route")

    monkeypatch.setattr(live.scheduler.tokenizer, "encode", broken)
    status, headers, _ = _post(live.base_url, "/tokenize", {"prompt": "hello"}, {"X-Request-Id": "route-7"})
    monkeypatch.undo()
    assert status == 500 and headers["x-request-id"] == "route-7"
    assert "arlm serve: internal error in request route-7:" in capfd.readouterr().err
