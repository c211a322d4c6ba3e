"""What every decoding strategy shares: its output, and the callbacks generate() takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

import torch

TokenCallback = Callable[[torch.Tensor], None]  # called with the (B,) tokens chosen at each step
StopCheck = Callable[[int, list[int]], bool]  # (row, generated ids so far, or their last `window`) -> stop this row?
TraceCallback = Callable[[dict], None]  # strategy events: beam search's beams, speculative decoding's verifications


class Callbacks(TypedDict):
    """generate()'s callbacks as a strategy takes them (keyword arguments of the same names)."""

    on_token: TokenCallback | None
    should_stop: StopCheck | None
    trace: TraceCallback | None


MAX_TOP = 20  # the most alternatives a token's log-probabilities or trace list (as OpenAI's top_logprobs)


@dataclass
class GenerationOutput:
    """Prompt + generated ids per returned sequence, beam scores when any, and timing statistics."""

    sequences: torch.Tensor  # (N, S) ids; rows that stopped early are filled with the pad id
    scores: torch.Tensor | None = None  # (N,) length-penalised log-probabilities (beam search)
    stats: dict = field(default_factory=dict)
    prompt_length: int = 0
    token_logprobs: torch.Tensor | None = None  # (N, S - prompt_length) beam search: each token's own, the model's
    token_top: tuple[torch.Tensor, torch.Tensor] | None = None  # its likeliest alternatives: ids, log-probs (N, ., m)

    def generated(self) -> list[list[int]]:
        """The new ids of each row, without the prompt or the padding after a stop."""
        rows = self.sequences[:, self.prompt_length :].tolist()
        lengths = self.stats.get("lengths")
        return [row[: lengths[i]] if lengths else row for i, row in enumerate(rows)]


def decoding_rate(new_tokens: int, seconds: float, prompt_s: float) -> dict:
    """The stats of decoding alone: the seconds the forward over the prompt but its last token took (the same
    forward in greedy decoding and speculative decoding, which verifies the last prompt token with its first
    drafts), and the tokens per second from there on."""
    return {"prompt_seconds": prompt_s, "decode_tokens_per_s": new_tokens / max(seconds - prompt_s, 1e-9)}


def stop_tail(check: StopCheck, generated: torch.Tensor) -> torch.Tensor:
    """The generated ids (..., n) a stop check is given: their last `check.window` where the check sets one (it reads
    no further back: a long answer's every step then costs what a short one's does), else all of them."""
    window = getattr(check, "window", None)
    return generated if window is None else generated[..., max(generated.shape[-1] - window, 0) :]
