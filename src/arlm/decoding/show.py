"""The picture of speculative decoding: each generated token marked as accepted from the draft or made by
the target (green/plain on a terminal; [brackets] around draft tokens otherwise)."""

from __future__ import annotations

from arlm.data.tokenizers import Tokenizer
from arlm.decoding.detokenize import Detokenizer

GREEN, RESET = "\x1b[32m", "\x1b[0m"


def render_drafts(
    tokenizer: Tokenizer, ids: list[int], from_draft: list[bool], *, color: bool, end: int | None = None
) -> str:
    """Text of ids with runs of draft-accepted tokens highlighted; only its first `end` characters (e.g. the text
    before a stop string) when given."""
    pieces, text_so_far, decoded = [], "", Detokenizer(tokenizer)
    for i in range(len(ids)):
        text = decoded.push(ids[i])
        if i < len(ids) - 1:  # a character not complete yet (U+FFFD) goes with the token that completes it
            text = text.rstrip("\ufffd")
        text = text[:end]
        pieces.append((text[len(text_so_far) :], from_draft[i] if i < len(from_draft) else False))
        text_so_far = text
    out, in_draft = [], False
    for piece, drafted in pieces:
        if not piece:  # past `end`, or a token that completes no character yet
            continue
        if drafted != in_draft:
            out.append((GREEN if drafted else RESET) if color else ("[" if drafted else "]"))
            in_draft = drafted
        out.append(piece)
    if in_draft:
        out.append(RESET if color else "]")
    return "".join(out)
