"""The playground in a real headless Chromium (Debian's, driven by Playwright): it loads without console errors,
streams a greedy run into the page token by token, marks speculative decoding's drafts accepted or rejected,
shows beam search's beams beside another strategy, and a screenshot is written."""

import json
import os
import shutil

import pytest

from tests.serving.conftest import MODEL_ID, draft_model, start_in_thread, wait_until

IN_CI = os.environ.get("CI", "").lower() in ("1", "true")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium; skipped where it (or playwright) is missing, except in CI, where it must be."""
    import importlib.util

    found = {"chromium": _chromium(), "playwright": importlib.util.find_spec("playwright")}
    missing = [what for what, ok in found.items() if not ok]
    if missing:
        message = f"needs {' and '.join(missing)} (apt-get install chromium; pip install playwright)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_lm):
    live, stop = start_in_thread(tiny_lm, draft=draft_model(tiny_lm), dtype="float32")
    yield live
    stop()


PROMPT = "The data model of Python"  # greedy runs 40 tokens without an end-of-text on the tiny model


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base_url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#prompt", PROMPT)
    page.uncheck("#chat")
    page.fill("#max_tokens", "40")
    return page, errors


def _done(page, panel: str) -> None:
    page.wait_for_function(
        f"document.querySelector('.panel[data-name={panel}] .stats').textContent.includes('tok/s')", timeout=120_000
    )


COUNT = "(sel) => [...document.querySelectorAll(sel)].reduce((n, s) => n + Number(s.dataset.tokens), 0)"


def _tokens(page, selector: str) -> int:
    """How many tokens the spans of selector hold (a character of several tokens is one span)."""
    return page.evaluate(COUNT, selector)


def test_a_greedy_run_streams_into_the_page(browser, server):
    page, errors = _open(browser, server)
    assert page.text_content("#status").startswith(f"{MODEL_ID} (float32) · context 256")  # /health's model, dtype
    page.uncheck("#compare")
    page.select_option(".panel[data-name=A] select[name=strategy]", "greedy")
    scheduler = server.scheduler
    scheduler.pause(after_steps=5)  # the decoding stops after 5 tokens: what the page shows then came in a stream
    try:
        page.click("#run")
        shown = f"({COUNT})('.panel[data-name=A] .output .tok[data-prob]') == 5"
        page.wait_for_function(shown, timeout=120_000)
        wait_until(lambda: scheduler.paused, "the decoding to stop")
        assert page.text_content(".panel[data-name=A] .stats") == "running…"
    finally:
        scheduler.resume()
    _done(page, "A")
    tokens = page.locator(".panel[data-name=A] .output .tok[data-prob]")
    assert _tokens(page, ".panel[data-name=A] .output .tok[data-prob]") == int(
        page.text_content(".panel[data-name=A] .stats").split()[0]
    )
    top = tokens.first.get_attribute("data-top")
    assert top and len(json.loads(top)) == 5  # top-5 alternatives for the hover
    tokens.first.hover()
    assert page.is_visible("#tip")
    assert errors == []


def test_the_json_switch_keeps_a_run_to_a_json_object_and_goes_with_greedy_and_sampling_only(browser, server):
    page, errors = _open(browser, server)
    page.uncheck("#compare")
    a = ".panel[data-name=A]"
    page.select_option(f"{a} select[name=strategy]", "beam")
    assert not page.is_visible(f"{a} [name=json]")  # beam search cannot keep to a grammar: no switch
    page.select_option(f"{a} select[name=strategy]", "greedy")
    page.check(f"{a} [name=json]")
    page.click("#run")
    _done(page, "A")
    text = "".join(page.locator(f"{a} .output .tok").all_text_contents()).replace("↵", "")
    tok = server.lm.tokenizer
    assert text.endswith(tok.token_text(tok.eos_id))  # the run ended on EOS: the JSON was complete
    assert isinstance(
        json.loads(text.removesuffix(tok.token_text(tok.eos_id))), dict
    )  # free, the tiny model writes no JSON (tests/serving/test_structured.py)
    assert errors == []


def test_speculative_marks_drafts_and_two_strategies_side_by_side(browser, server, tmp_path):
    page, errors = _open(browser, server)
    page.select_option(".panel[data-name=A] select[name=strategy]", "speculative")
    page.fill(".panel[data-name=A] [name=temperature]", "0")
    page.select_option(".panel[data-name=B] select[name=strategy]", "beam")
    page.click("#run")
    _done(page, "A")
    _done(page, "B")
    a = ".panel[data-name=A]"
    marks = page.locator(f"{a} .verify .mark.acc").count() + page.locator(f"{a} .verify .mark.rej").count()
    assert page.locator(f"{a} .verify").count() >= 1 and marks >= 1
    assert page.locator(f"{a} .verify .mark.next").count() == page.locator(f"{a} .verify").count()
    assert _tokens(page, f"{a} .tok.accepted, {a} .tok.target") == 40
    verified = f"{a} .tok.accepted, {a} .tok.target"
    tops = page.eval_on_selector_all(  # (a character of several tokens: each one's)
        verified,
        "spans => spans.flatMap((s) => s.dataset.parts ? JSON.parse(s.dataset.parts).map((p) => p[2])"
        " : [JSON.parse(s.dataset.top || '[]')])",
    )
    assert len(tops) == 40
    assert all(len(top) == 5 and top[0][1] >= top[-1][1] for top in tops)  # the target's alternatives, by probability
    assert "tokens per target forward" in page.text_content(f"{a} .stats")
    b = ".panel[data-name=B]"
    assert page.locator(f"{b} table.beams tr.finished").count() >= 1  # the last step: hypotheses, ranked
    assert "beams after step" in page.text_content(f"{b} .side h3")
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_lookup_first_sends_its_switch_and_each_verification_says_what_drafted(browser, server):
    """'lookup first' ticked: the request carries lookup_first, and every verification row says whether prompt
    lookup copied its drafts or the draft model drafted them, as the server's trace said."""
    page, errors = _open(browser, server)
    page.uncheck("#compare")
    page.fill("#prompt", "one two three one two three one two three one two")  # recurring text: lookup matches
    page.select_option(".panel[data-name=A] select[name=strategy]", "speculative")
    page.fill(".panel[data-name=A] [name=temperature]", "0")
    page.check(".panel[data-name=A] [name=lookup_first]")
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.method == "POST" else None)
    page.click("#run")
    _done(page, "A")
    assert bodies and bodies[0]["lookup_first"] is True and bodies[0]["strategy"] == "speculative"
    rows = page.locator(".panel[data-name=A] .verify")
    sources = [rows.nth(i).get_attribute("data-source") for i in range(rows.count())]
    labels = [rows.nth(i).locator(".source").text_content() for i in range(rows.count())]
    assert sources and set(sources) <= {"lookup", "model"}
    assert labels == [{"lookup": "copied", "model": "drafted"}[s] for s in sources]
    page.fill("#prompt", "The data model")  # prompt lookup, little to copy: rounds that drafted nothing
    page.select_option(".panel[data-name=A] select[name=strategy]", "prompt-lookup")
    page.click("#run")
    _done(page, "A")
    rows = page.locator(".panel[data-name=A] .verify")
    drafted = [rows.nth(i).locator(".acc, .rej").count() for i in range(rows.count())]
    labels = [rows.nth(i).locator(".source").text_content() for i in range(rows.count())]
    assert 0 in drafted and labels == ["no draft" if n == 0 else "copied" for n in drafted]
    assert errors == []


def test_a_server_with_an_api_key_has_the_page_ask_for_it(browser, tiny_lm):
    """With --api-key the page shows a key field and sends the key with its runs: a wrong one is the server's 401
    message in the panel, the right one streams the run; without a key the field stays hidden."""
    keyed, stop = start_in_thread(tiny_lm, api_key="s3cret")
    try:
        page, errors = _open(browser, keyed)
        page.uncheck("#compare")
        assert page.is_visible("#api_key")
        page.fill("#api_key", "wrong")
        page.click("#run")
        stats = ".panel[data-name=A] .stats"
        page.wait_for_function(f"document.querySelector('{stats}').textContent.includes('incorrect API key')")
        page.fill("#api_key", "s3cret")
        page.click("#run")
        _done(page, "A")
        assert page.locator(".panel[data-name=A] .output .tok").count() > 0
        assert [e for e in errors if "401" not in e] == []  # the browser logs the refused request itself
    finally:
        stop()


def test_without_a_key_the_page_shows_no_key_field(browser, server):
    page, errors = _open(browser, server)
    assert not page.is_visible("#api_key") and errors == []


def test_a_broken_stream_and_a_refused_length_are_said_in_the_panel(browser, server):
    """An answer cut before its end, a connection that breaks, and a max tokens of 0 each end the panel's run with
    a message (it stayed on "running…" with an uncaught error; 0 was sent as 16)."""
    page, _ = _open(browser, server)
    uncaught = []
    page.on("pageerror", lambda exc: uncaught.append(str(exc)))
    page.uncheck("#compare")
    page.select_option(".panel[data-name=A] select[name=strategy]", "greedy")
    stats = ".panel[data-name=A] .stats"
    cut = 'data: {"type": "token", "id": 5, "piece": "a", "text": "a"}\n\n'  # then the stream ends
    answers = {
        "stopped before its end": lambda route: route.fulfill(status=200, content_type="text/event-stream", body=cut),
        "connection lost": lambda route: route.abort(),
    }
    said = "(m) => { const e = document.querySelector('%s .error'); return e !== null && e.textContent.includes(m); }"
    for message, answer in answers.items():
        page.route("**/v1/arlm/trace", answer)
        page.click("#run")
        page.wait_for_function(said % stats, arg=message, timeout=60_000)
        page.unroute("**/v1/arlm/trace")
    page.fill("#max_tokens", "0")
    page.click("#run")
    page.wait_for_function(said % stats, arg="max_tokens", timeout=60_000)
    assert uncaught == []
    page.close()


def _token(token: int, text: str) -> dict:
    return {"type": "token", "index": 0, "id": token, "text": text, "piece": text, "partial": False}


def _sse(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_verification_rows_tell_rejected_unjudged_and_past_the_end_drafts_apart(browser, server):
    """After a rejection the later drafts were never judged (marked so, not 'rejected'); a draft of whitespace shows
    (a space was an empty box); drafts and the target's token of a round past the answer's end are 'past the end',
    not accepted. The server's events are played back (page.route), so each case is there."""
    page, errors = _open(browser, server)
    page.uncheck("#compare")
    page.select_option(".panel[data-name=A] select[name=strategy]", "prompt-lookup")
    top = [[{"id": 9, "piece": "q", "prob": 0.5}]] * 3
    stream = _sse(
        {"type": "start", "strategy": "prompt-lookup", "prompt_tokens": 3, "n": 1},
        {"type": "verify", "index": 0, "source": "lookup", "accepted": 1, "probs": [0.5, 0.25], "top": top[:2],
         "drafted": [{"id": 1, "piece": " a"}, {"id": 2, "piece": " "}, {"id": 3, "piece": "b"}],
         "token": {"id": 4, "piece": "c"}},
        *(_token(i, t) for i, t in [(1, " a"), (4, "c")]),
        {"type": "verify", "index": 0, "source": "lookup", "accepted": 2, "probs": [0.9, 0.9, 0.9], "top": top,
         "drafted": [{"id": 5, "piece": "x"}, {"id": 6, "piece": "y"}, {"id": 8, "piece": "w"}],
         "token": {"id": 7, "piece": "z"}},
        _token(5, "x"),  # then the answer ends: y and z (kept by the round) are no part of it; w stays rejected
        {"type": "finish", "index": 0, "reason": "stop", "text": ""},
        {"type": "done", "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}},
    )  # fmt: skip
    page.route(
        "**/v1/arlm/trace", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream)
    )
    page.click("#run")
    _done(page, "A")
    rows = page.locator(".panel[data-name=A] .verify")
    classes = [
        [(m.get_attribute("class"), m.text_content()) for m in rows.nth(i).locator(".mark").all()] for i in range(2)
    ]
    assert classes[0] == [("mark acc", " a"), ("mark rej", "␣"), ("mark skip", "b"), ("mark next", "c")]
    assert classes[1] == [("mark acc", "x"), ("mark unused", "y"), ("mark rej", "w"), ("mark unused", "z")]
    assert page.locator(".panel[data-name=A] .output .tok.accepted").count() == 2  # " a" and "x"
    assert errors == []


def test_empty_knobs_are_the_servers_defaults_and_side_by_side_runs_one_panel_after_the_other(browser, server):
    """An emptied seed is unseeded and an emptied temperature the server's default (both were sent as 0: every run
    drew the same tokens, 'sample' decoded greedily); adaptive drafting sends no drafts per step; panel B's request
    goes once A's answer is whole, so neither one's timing holds the other's run."""
    page, errors = _open(browser, server)
    a, b = ".panel[data-name=A]", ".panel[data-name=B]"
    assert page.input_value(f"{b} [name=temperature]") == "0"  # speculative beside greedy: greedy's text exactly
    page.select_option(f"{a} select[name=strategy]", "sample")
    page.fill(f"{a} [name=temperature]", "")
    page.check(f"{b} [name=adaptive_draft]")
    assert page.is_disabled(f"{b} [name=num_draft_tokens]")
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.method == "POST" else None)
    page.evaluate(  # what panel A said as each request left
        """() => { const send = window.fetch; window.aSaid = [];
                   window.fetch = (...args) => {
                     window.aSaid.push(document.querySelector('.panel[data-name=A] .stats').textContent);
                     return send(...args); }; }"""
    )
    page.click("#run")
    _done(page, "A")
    _done(page, "B")
    body_a, body_b = sent
    assert "seed" not in body_a and "temperature" not in body_a and body_a["strategy"] == "sample"
    assert body_b["adaptive_draft"] is True and "num_draft_tokens" not in body_b and body_b["temperature"] == 0
    said = page.evaluate("window.aSaid")
    assert said[0] == "running…" and "tok/s" in said[1]  # B's request left once A's answer was whole
    assert errors == []


def test_stop_ends_a_run_midway_and_keeps_what_it_showed(browser, server):
    """The Run button is Stop while a run is under way (a long run could only be left by reloading the page, which
    lost every setting): the stream is cut, the panel says so, the page's settings stay."""
    page, errors = _open(browser, server)
    page.uncheck("#compare")
    page.select_option(".panel[data-name=A] select[name=strategy]", "greedy")
    scheduler = server.scheduler
    scheduler.pause(after_steps=3)
    try:
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('.panel[data-name=A] .output .tok').length == 3")
        assert page.text_content("#run") == "Stop"
        page.press("#prompt", "Control+Enter")  # (as the button: Stop while a run is under way)
        page.wait_for_function("document.querySelector('.panel[data-name=A] .stats').textContent.startsWith('stopped')")
    finally:
        scheduler.resume()
    assert page.text_content(".panel[data-name=A] .stats") == "stopped after 3 tokens"
    assert page.text_content("#run") == "Run" and page.input_value("#prompt") == PROMPT
    wait_until(lambda: server.scheduler.metrics.queue_length._value.get() == 0, "the cancelled request to leave")
    assert errors == []


def _p(prob: float) -> str:
    """A probability as the page writes it: 3 decimals, or 1 significant digit's exponent below 0.001."""
    if prob >= 0.001:
        return f"{prob:.3f}"
    mantissa, exponent = f"{prob:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _completion_logprobs(server, body: dict) -> dict:
    """The server's own /v1/completions log-probabilities for body."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url + "/v1", api_key="none")
    return client.completions.create(model=MODEL_ID, **body).choices[0].logprobs


def test_the_answer_is_read_with_the_keyboard_alone(browser, server):
    """Tab stops once on the answer (not once per token), the arrow keys move between its tokens, a token with the
    focus is outlined and shows the tip hover shows, below it and inside the window, Escape hides it; each token's
    accessible name (Chromium's) is its text and the probability the API's logprobs give it."""
    import math

    from playwright.sync_api import expect

    page, errors = _open(browser, server)
    page.uncheck("#compare")
    page.select_option(".panel[data-name=A] select[name=strategy]", "greedy")
    page.click("#run")
    _done(page, "A")
    tokens = page.locator(".panel[data-name=A] .output .tok")
    page.focus("#run")
    for _ in range(6):  # the strategy, the repetition penalty, the JSON switch, then the answer
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('tok')"):
            break
    is_focused = "(i) => document.activeElement === document.querySelectorAll('.panel[data-name=A] .tok')[i]"
    assert page.evaluate(is_focused, 0)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(is_focused, 2)
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    assert page.is_visible("#tip")
    tip, token = page.locator("#tip").bounding_box(), tokens.nth(2).bounding_box()
    assert tip["x"] >= 0 and tip["x"] + tip["width"] <= 1400 and tip["y"] >= 0 and tip["y"] + tip["height"] <= 900
    assert abs(tip["y"] - (token["y"] + token["height"])) <= 8 or abs(tip["y"] + tip["height"] - token["y"]) <= 8
    by_keyboard = page.text_content("#tip")
    page.keyboard.press("Escape")
    assert not page.is_visible("#tip")
    tokens.nth(2).hover()
    assert page.text_content("#tip") == by_keyboard  # the same tip as the mouse's
    logprobs = _completion_logprobs(server, {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "logprobs": 5})
    counts = [int(n) for n in tokens.evaluate_all("spans => spans.map((s) => s.dataset.tokens)")]
    first = sum(counts[:2])  # the third span's tokens in the API's list
    prob = math.exp(sum(logprobs.token_logprobs[first : first + counts[2]]))
    text = tokens.nth(2).text_content().replace("↵", "")
    several = f", {counts[2]} tokens" if counts[2] > 1 else ""
    name = f"{json.dumps(text, ensure_ascii=False)}{several}, p = {_p(prob)}"
    expect(page.locator(":focus")).to_have_accessible_name(name)
    assert f"p = {_p(prob)}" in by_keyboard
    page.keyboard.press("Tab")  # out of the answer at once, and back to the token it left
    assert not page.evaluate("document.activeElement.classList.contains('tok')")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(is_focused, 2)
    page.keyboard.press("End")
    assert page.evaluate(is_focused, tokens.count() - 1)
    assert errors == []


@pytest.fixture(scope="module")
def smollm2_server():
    """SmolLM2-135M served (its byte-level BPE spells a CJK character in several tokens)."""
    from arlm.interop.gguf import load_gguf_model
    from arlm.model.inference import optimize_for_decoding
    from tests.serving.conftest import TinyLM

    loaded = load_gguf_model("smollm2")
    live, stop = start_in_thread(TinyLM(optimize_for_decoding(loaded.model), loaded.tokenizer, None))
    yield live
    stop()


@pytest.mark.slow
@pytest.mark.real_model
def test_a_character_of_several_tokens_is_drawn_once_with_their_joint_probability(browser, smollm2_server):
    """SmolLM2 answers in Chinese, three byte-tokens a character: each character is drawn once over its tokens (it
    was drawn on the last one, coloured by that one's probability, after two empty boxes), its probability the
    product of theirs, and its tip lists each one's own with its top-5, all as the API's chat logprobs say."""
    import math

    from openai import OpenAI

    page, errors = _open(browser, smollm2_server)
    page.uncheck("#compare")
    page.check("#chat")
    prompt = "Translate to Chinese: good morning"
    page.fill("#prompt", prompt)
    page.fill("#max_tokens", "16")
    page.select_option(".panel[data-name=A] select[name=strategy]", "greedy")
    page.click("#run")
    _done(page, "A")
    client = OpenAI(base_url=smollm2_server.base_url + "/v1", api_key="none")
    answer = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0, logprobs=True,
        top_logprobs=5,
    ).choices[0]  # fmt: skip
    entries = answer.logprobs.content
    spans = page.locator(".panel[data-name=A] .output .tok")
    read = "spans => spans.map((s) => [s.textContent, Number(s.dataset.tokens || 1), Number(s.dataset.prob)])"
    at, several = 0, []
    for k, (text, n, prob) in enumerate(spans.evaluate_all(read)):
        if at == len(entries):
            break
        theirs = entries[at : at + n]
        assert text.replace("↵", "") == b"".join(bytes(e.bytes) for e in theirs).decode("utf-8", "replace")
        assert prob == pytest.approx(math.exp(sum(e.logprob for e in theirs)), rel=1e-4)
        if n > 1:
            several.append((k, theirs))
        at += n
    assert at == len(entries) and len(several) >= 3  # every token of the API's answer, its characters among them
    k, theirs = several[0]
    parts = json.loads(spans.nth(k).get_attribute("data-parts"))
    for (_, prob, top), entry in zip(parts, theirs, strict=True):
        assert prob == pytest.approx(math.exp(entry.logprob), rel=1e-4)
        assert [p for _, p in top] == pytest.approx([math.exp(t.logprob) for t in entry.top_logprobs], rel=1e-4)
    spans.nth(k).hover()
    tip = page.text_content("#tip")
    assert all(f"{piece}: p = {_p(prob)}" in tip for piece, prob, _ in parts)
    assert errors == []


def test_beam_searchs_answer_has_the_models_own_probability_of_each_token_along_its_beam(browser, server):
    """Beam search's answer came at the end without colours: each of its tokens now has the model's own probability
    along the chosen beam (what the search computed, before the repetition penalty it ran with) and its top-5, as
    the API's echoed log-probabilities of the same ids say."""
    import math

    page, errors = _open(browser, server)
    page.uncheck("#compare")
    a = ".panel[data-name=A]"
    page.select_option(f"{a} select[name=strategy]", "beam")
    page.fill(f"{a} [name=repetition_penalty]", "1.3")  # the beams' scores are not the colours
    page.fill("#max_tokens", "12")
    page.click("#run")
    _done(page, "A")
    read = """spans => spans.flatMap((s) => s.dataset.parts
        ? JSON.parse(s.dataset.parts).map((p) => [p[1], p[2].map((t) => t[1])])
        : [[Number(s.dataset.prob), JSON.parse(s.dataset.top || '[]').map((t) => t[1])]])"""
    spans = page.locator(f"{a} .output .tok[data-ids]:not([data-ids=''])")
    shown = spans.evaluate_all(read)
    ids = [int(t) for s in spans.evaluate_all("spans => spans.map((s) => s.dataset.ids)") for t in s.split()]
    prompt = server.lm.tokenizer.encode(PROMPT)
    body = {"prompt": prompt + ids, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 5}
    logprobs = _completion_logprobs(server, body)
    start = len(prompt)
    assert len(shown) == len(ids) > 0
    for k, (prob, top) in enumerate(shown):
        assert prob == pytest.approx(math.exp(logprobs.token_logprobs[start + k]), rel=1e-4)
        theirs = sorted(logprobs.top_logprobs[start + k].values(), reverse=True)[:5]
        assert top == pytest.approx([math.exp(lp) for lp in theirs], rel=1e-4)
    assert errors == []
