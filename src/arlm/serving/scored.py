"""A token event's log-probability fields (its own, its text, its alternatives), from the batch engine's figures,
beam search's record of a returned beam, or the speculative verification that kept the token."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.types import GenerationOutput


def logprob_fields(tokenizer: Tokenizer, token: int, logprob: float, top: Iterable[tuple[int, float]]) -> dict:
    """The fields: the token's log-probability, its text, and its alternatives as (id, text, log-probability)."""
    text = tokenizer.token_text
    return {"logprob": logprob, "piece": text(token), "top": [(t, text(t), lp) for t, lp in top]}


def beam_fields(tokenizer: Tokenizer, out: GenerationOutput, row: int, j: int) -> dict:
    """The fields of beam search's returned row's j-th token: the model's own log-probability of it along its beam
    (what the search computed), with the alternatives it kept (traced)."""
    token = int(out.sequences[row, out.prompt_length + j])
    top = [] if out.token_top is None else zip(*(t[row, j].tolist() for t in out.token_top))
    return logprob_fields(tokenizer, token, float(out.token_logprobs[row, j]), top)
