"""Stop strings: how much of a streamed text may still begin one."""

import pytest
import torch

from arlm.decoding.stops import check_stops, held_back, stop_checker
from arlm.errors import ArlmError


def test_held_back_is_the_longest_ending_that_starts_a_stop():
    assert held_back("the spa", ["space", "pa"]) == 3
    assert held_back("the sp", ["xyz"]) == 0
    assert held_back("aaa", ["aab"]) == 2


@pytest.mark.real_model
def test_a_stop_string_naming_a_special_token_stops_at_it(smollm2):
    """Decoded text never holds `<|im_start|>` (special tokens are skipped), so a stop string naming one stops at
    its id, in generate's check and the server's text stream alike; the text before it is all handed out."""
    from arlm.decoding.text_stream import TextStream

    tok = smollm2.tokenizer
    answer = tok.encode("The answer is 4.")
    im_end, im_start = tok.encode("<|im_end|>"), tok.encode("<|im_start|>")
    ids = [*answer, *im_end, *tok.encode("\n"), *im_start, *tok.encode("system\nNext")]
    check = stop_checker(tok, ["<|im_start|>"])
    fired = [n for n in range(1, len(ids) + 1) if check(0, ids[:n])]
    assert fired[0] == len(answer) + 3  # at the <|im_start|> id, not before
    stream = TextStream(tok, ["<|im_start|>"])
    sent = "".join(stream.push(i) for i in ids) + stream.flush()
    assert stream.stopped and sent == "The answer is 4.\n"
    assert stream.position()["listed"] == len(answer) + 2  # <|im_end|> is listed (it ends the text), not the stop
    assert not any(stop_checker(tok, ["<|im_end|>x"])(0, ids[:n]) for n in range(1, len(ids) + 1))
    check_stops(tok, ["<|im_start|>", "4."])
    with pytest.raises(ArlmError, match=r"'<\|im_end\|>x' holds the special token <\|im_end\|> among other text"):
        check_stops(tok, ["<|im_end|>x"])  # which never matches (above): refused, by generate, chat and the server


@pytest.mark.real_model
def test_a_stop_string_of_multibyte_text_is_seen_when_it_completes(smollm2):
    """A 14-character Japanese stop string spans ~23 byte-level tokens: the check looks back far enough to see it."""
    tok = smollm2.tokenizer
    stop = "日本の首都です。\n\nそれぞら"
    ids = tok.encode("東京は" + stop + "か")
    check = stop_checker(tok, [stop])
    fired = [n for n in range(1, len(ids) + 1) if check(0, ids[:n])]
    assert fired and tok.decode(ids[: fired[0]]).endswith(stop) and not tok.decode(ids[: fired[0] - 1]).endswith(stop)


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "greedy"},
        {"strategy": "beam", "num_beams": 2},
        {"strategy": "prompt-lookup", "temperature": 0},
        {"strategy": "speculative", "temperature": 0},
    ],
)
def test_a_stop_check_with_a_window_gets_the_latest_ids_only(settings):
    """A check that reads back `window` ids (stop strings') is given those, not the whole answer each step (which made
    a long answer's steps cost more and more); what it is given is the row's latest ids, and it stops generation at
    the same place as the same check over the whole answer."""
    from arlm.config import GenerationConfig
    from arlm.decoding.generate import generate
    from tests.decoding.test_engine import _model

    model, prompt = _model(), [[5, 6, 5, 6, 5, 6, 7]]
    with torch.no_grad():  # (weights 4x larger: an answer that does not repeat one token)
        for weight in model.parameters():
            weight.mul_(4)
    seen: list[list[int]] = []

    def tail_check(row, ids):
        seen.append(list(ids))
        return ids[-2:] == stop

    tail_check.window = 3
    config = GenerationConfig(max_new_tokens=40, **settings)
    draft = {"draft": model} if settings["strategy"] == "speculative" else {}
    free = generate(model, prompt, config, **draft).generated()[0]
    at = next(i for i in range(20, len(free) - 1) if free[i : i + 2] not in [free[j : j + 2] for j in range(i)])
    stop = free[at : at + 2]  # (a pair first seen past 20 ids)
    out = generate(model, prompt, config, should_stop=tail_check, **draft).generated()[0]
    whole = generate(model, prompt, config, should_stop=lambda row, ids: ids[-2:] == stop, **draft).generated()[0]
    assert out == whole and len(out) <= at + 2
    assert seen and all(len(ids) <= 3 for ids in seen) and max(len(ids) for ids in seen) == 3
    if settings["strategy"] != "beam":  # (beam search's candidates are other rows)
        assert out == free[: at + 2] and seen[-1] == out[-3:]
