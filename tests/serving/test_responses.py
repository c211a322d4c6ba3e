"""The playground's trace events name each token by its text, and a piece of a character by its bytes."""

import math

from arlm.data.tokenizers import train_tokenizer
from arlm.serving.responses import TraceFormat
from tests.helpers import tiny_text


def test_pieces_of_a_character_are_named_by_their_bytes_in_every_event():
    tok = train_tokenizer("bpe", tiny_text(40), 300)
    ids = tok.encode("a🙂")  # "a", then the emoji's four bytes, each a token of its own here
    first, *parts = ids
    trace = TraceFormat(tok, top=2)
    top = [(t, tok.token_text(t), -1.0) for t in parts[:2]]
    (whole,) = trace.events({"type": "token", "index": 0, "token": first, "text": "a", "logprob": -0.5, "top": top})
    (part,) = trace.events({"type": "token", "index": 0, "token": parts[0], "text": "", "logprob": -1.0, "top": top})
    assert (whole["piece"], whole["partial"]) == ("a", False)
    assert (part["piece"], part["partial"]) == ("<0xF0>", True)
    assert [t["piece"] for t in part["top"]] == ["<0xF0>", "<0x9F>"]
    top = [[(parts[k], -1.0), (first, -2.0), (parts[3], -3.0)] for k in range(3)]  # as speculative decoding's
    data = {"event": "verify", "source": "model", "drafted": parts[:3], "accepted": 2, "token": parts[3], "top": top}
    (verify,) = trace.events({"type": "trace", "index": 0, "data": {**data, "logprobs": [-1.0, -1.0, -0.5]}})
    assert [d["piece"] for d in verify["drafted"]] == ["<0xF0>", "<0x9F>", "<0x99>"]
    assert verify["token"]["piece"] == "<0x82>"
    assert verify["top"][1] == [
        {"id": parts[1], "piece": "<0x9F>", "prob": math.exp(-1.0)},
        {"id": first, "piece": "a", "prob": math.exp(-2.0)},
    ]
    assert verify["probs"] == [math.exp(-1.0), math.exp(-1.0), math.exp(-0.5)]  # the playground's probabilities


def test_completions_logprobs_spell_pieces_of_a_character_by_their_bytes_and_keep_the_chosen_ones_own():
    """Every piece of a character read U+FFFD, so the top_logprobs dict (keyed by text) merged them and the chosen
    token's entry held the likeliest piece's log-probability, not its own (6 of 24 positions of an emoji reply)."""
    from arlm.serving.responses import OpenAIFormat

    tok = train_tokenizer("bpe", tiny_text(40), 300)
    first, *parts = tok.encode("a🙂")  # "a", then the emoji's four bytes, each a token of its own here
    fmt = OpenAIFormat("completion", "m", 1, 1, piece_bytes=tok.piece_bytes)
    ids = [first, parts[0], parts[1]]
    for k, token in enumerate(ids):
        top = [(parts[1], tok.token_text(parts[1]), -0.1), (parts[0], tok.token_text(parts[0]), -0.2)]
        event = {"type": "token", "index": 0, "token": token, "text": "a" if k == 0 else "", "listed": k + 1}
        fmt.chunks(
            {**event, "start": 0 if k == 0 else 1, "logprob": -0.3 - k, "piece": tok.token_text(token), "top": top}
        )
    fmt.chunks({"type": "finish", "index": 0, "text": "", "reason": "length", "listed": 3})
    logprobs = fmt.response(with_logprobs=True)["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["a", "bytes:\\xf0", "bytes:\\x9f"]
    for token, own, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert top[token] == own  # the chosen token's own log-probability
    assert logprobs["top_logprobs"][1] == {"bytes:\\x9f": -0.1, "bytes:\\xf0": -1.3}
