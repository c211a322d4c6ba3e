from arlm.data.tokenizers import train_tokenizer
from arlm.decoding.text_stream import TextStream
from tests.helpers import tiny_text


def _tok():
    return train_tokenizer("bpe", tiny_text(12), 320)


def test_pieces_add_up_to_the_decoded_text_and_wait_for_whole_characters():
    tok = _tok()
    text = "Objects are Python's abstraction — ça va? 日本"
    ids = tok.encode(text)
    stream = TextStream(tok)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)  # a character split over tokens comes out whole


def test_stop_strings_are_cut_and_never_sent_even_in_part():
    tok = _tok()
    text = "Objects are Python's abstraction for data. All data is represented by objects."
    ids = tok.encode(text)
    stream = TextStream(tok, stops=["for data", "never"])
    pieces = []
    for t in ids:
        pieces.append(stream.push(t))
        if stream.stopped:
            break
    assert stream.stopped and "".join(pieces) == "Objects are Python's abstraction "
    assert stream.flush() == "" and stream.push(ids[-1]) == ""
    starts = [stop[:k] for stop in ("for data", "never") for k in range(1, len(stop))]
    for i in range(len(pieces)):  # what had been sent never ended in the start of a stop string
        assert not "".join(pieces[: i + 1]).endswith(tuple(starts))


def test_a_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    tok = _tok()
    ids = tok.encode("data model")
    stream = TextStream(tok, stops=["data base"])
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) + stream.flush() == "data model" and not stream.stopped
