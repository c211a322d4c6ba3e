"""`arlm serve --reuse-prefix`: a chat's later turns start from the keys and values their slot holds of the
conversation so far, answer what a server without it answers, and say so in OpenAI's
usage.prompt_tokens_details.cached_tokens."""

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


def _conversation(server, strategy: str = "greedy") -> tuple[list[str], list[int], list[int]]:
    """Three turns at temperature 0, each request carrying the whole conversation so far: the replies, prompt sizes
    and the prompt tokens each usage says were cached."""
    client, messages, replies, prompts, cached = server.client(), [], [], [], []
    for turn in ("What is a class?", "And an object?", "Give an example."):
        messages.append({"role": "user", "content": turn})
        out = client.chat.completions.create(
            model=MODEL_ID, messages=messages, max_tokens=16, temperature=0, extra_body={"strategy": strategy}
        )
        replies.append(out.choices[0].message.content)
        prompts.append(out.usage.prompt_tokens)
        cached.append(out.usage.prompt_tokens_details.cached_tokens)
        messages.append({"role": "assistant", "content": replies[-1]})
    return replies, prompts, cached


@pytest.mark.parametrize("strategy", ["greedy", "prompt-lookup"])  # the batch's slots, the lane's engine
def test_a_chats_later_turns_reuse_their_cache_and_answer_as_without(reusing, live, strategy):
    before, plain_before = _reused(reusing.base_url), _reused(live.base_url)
    replies, prompts, cached = _conversation(reusing, strategy)
    reused = _reused(reusing.base_url) - before
    assert 0 < reused < sum(prompts[1:])  # the later turns' earlier tokens, never a whole prompt
    assert reused >= prompts[0]  # at least the first turn's prompt again in each of the later two
    assert cached[0] == 0 and sum(cached) == reused  # each request's usage says what it reused
    plain_replies, plain_prompts, plain_cached = _conversation(live, strategy)
    assert (replies, prompts) == (plain_replies, plain_prompts)  # the same answers from a server that reuses nothing
    assert _reused(live.base_url) == plain_before and plain_cached == [0, 0, 0]


def test_a_streamed_usage_and_a_list_of_prompts_count_the_cached_tokens(reusing):
    """The usage chunk of a stream (include_usage) and of a list of prompts (summed over them) carry cached_tokens."""
    client = reusing.client()
    first = client.completions.create(model=MODEL_ID, prompt="The data model of", max_tokens=6, temperature=0)
    again = "The data model of" + first.choices[0].text + " and"
    chunks = list(
        client.completions.create(
            model=MODEL_ID,
            prompt=again,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    both = client.completions.create(model=MODEL_ID, prompt=[again, again], max_tokens=4, temperature=0)
    assert both.usage.prompt_tokens_details.cached_tokens > chunks[-1].usage.prompt_tokens_details.cached_tokens
