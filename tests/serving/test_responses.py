"""The playground's trace events name each token by its text, and a piece of a character by its bytes."""

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
    top = [[(parts[k], 0.5), (first, 0.25), (parts[3], 0.125)] for k in range(3)]  # as speculative decoding's
    data = {"event": "verify", "source": "model", "drafted": parts[:3], "accepted": 2, "token": parts[3], "top": top}
    (verify,) = trace.events({"type": "trace", "index": 0, "data": {**data, "probs": [0.5, 0.5, 0.5]}})
    assert [d["piece"] for d in verify["drafted"]] == ["<0xF0>", "<0x9F>", "<0x99>"]
    assert verify["token"]["piece"] == "<0x82>"
    assert verify["top"][1] == [
        {"id": parts[1], "piece": "<0x9F>", "prob": 0.5},
        {"id": first, "piece": "a", "prob": 0.25},
    ]
