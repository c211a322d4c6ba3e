"""`arlm serve --reuse-prefix`: a chat's later turns start from the keys and values their slot holds of the
conversation so far, and answer what a server without it answers."""

import re

import pytest

from tests.serving.conftest import MODEL_ID, request, start_in_thread


@pytest.fixture(scope="module")
def reusing(tiny_lm):
    server, stop = start_in_thread(tiny_lm, reuse_prefix=True)
    yield server
    stop()


def _reused(base_url: str) -> float:
    """The server's arlm_prompt_tokens_reused counter."""
    metrics = request(base_url, "GET", "/metrics")[1]
    return float(re.search(r"^arlm_prompt_tokens_reused_total (\S+)$", metrics, re.M).group(1))


def _conversation(server) -> tuple[list[str], list[int]]:
    """Three greedy turns, each request carrying the whole conversation so far: the replies and prompt sizes."""
    client, messages, replies, prompts = server.client(), [], [], []
    for turn in ("What is a class?", "And an object?", "Give an example."):
        messages.append({"role": "user", "content": turn})
        out = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=16, temperature=0)
        replies.append(out.choices[0].message.content)
        prompts.append(out.usage.prompt_tokens)
        messages.append({"role": "assistant", "content": replies[-1]})
    return replies, prompts


def test_a_chats_later_turns_reuse_their_slot_and_answer_as_without(reusing, live):
    before, plain_before = _reused(reusing.base_url), _reused(live.base_url)
    replies, prompts = _conversation(reusing)
    reused = _reused(reusing.base_url) - before
    assert 0 < reused < sum(prompts[1:])  # the later turns' earlier tokens, never a whole prompt
    assert reused >= prompts[0]  # at least the first turn's prompt again in each of the later two
    assert (replies, prompts) == _conversation(live)  # the same answers from a server that reuses nothing
    assert _reused(live.base_url) == plain_before
