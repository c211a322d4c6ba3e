"""Which decoding settings each strategy reads, so that one given where it would do nothing is refused (never
silently ignored): `--top-k` with beam search, `--num-beams` with sampling, a sampling knob at temperature 0."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from arlm.config import GenerationConfig
from arlm.errors import ArlmError

LOOKUP_MATCH_MIN = 2  # adaptive prompt lookup drafts only after a match of at least this many tokens
BY_MATCH_NGRAM = LOOKUP_MATCH_MIN + 2  # the n-gram prompt lookup matches at least, sizing drafts by the match
SAMPLING = ("temperature", "top_k", "top_p", "min_p")
DRAFTING = ("num_draft_tokens", "adaptive_draft", "prompt_lookup_ngram")
READ_BY = {  # strategy -> the settings it reads beyond those of every strategy (EVERY)
    "greedy": ("compile",),
    "sample": (*SAMPLING, "num_return_sequences", "compile"),
    "beam": ("num_beams", "num_return_sequences", "length_penalty", "early_stopping"),
    "speculative": (*SAMPLING, *DRAFTING, "lookup_first"),
    "prompt-lookup": (*SAMPLING, *DRAFTING),
}
EVERY = (
    "strategy",
    "max_new_tokens",
    "min_new_tokens",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "stop",
    "stop_at_eos",
    "seed",  # (nothing to seed without draws: harmless, and clients such as lm-eval send one with temperature 0)
    "kv_dtype",
)
NEUTRAL = {  # a setting at this value does nothing under any strategy, so it is never refused
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "num_return_sequences": 1,
    "compile": False,
    "adaptive_draft": False,
    "lookup_first": False,
}


FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationConfig))


def unread(config: GenerationConfig, given: Iterable[str], at_zero: bool = True) -> list[str]:
    """The given settings config's strategy does not read at config's values (top_k with beam, top_k at
    temperature 0), in the order given; a setting at its neutral value (temperature 0, top_k 0) is read by all,
    and a name that is no GenerationConfig field (a request's model, n) is passed over. at_zero=False lets OpenAI's
    sampling settings (top_p) pass at temperature 0 under any strategy, as OpenAI's API takes them (clients send
    top_p with every request); arlm's own (top_k, min_p) are still refused there."""
    read = set(EVERY) | set(READ_BY[config.strategy])
    if config.strategy == "speculative" and not config.lookup_first:  # the n-gram of prompt lookup's own drafts
        read.discard("prompt_lookup_ngram")
    if config.temperature == 0:
        read = read - set(SAMPLING) | ({"temperature"} if at_zero else {"temperature", "top_p"})
    return [
        name
        for name in given
        if name in FIELDS and name not in read and getattr(config, name) != NEUTRAL.get(name, ...)
    ]


def refuse_unread(config: GenerationConfig, given: Iterable[str], spell: Callable[[str], str] = str) -> None:
    """Raise ArlmError naming the first given setting that would do nothing with config's strategy (spell: how
    the caller writes a setting, e.g. top_k as --top-k)."""
    names = unread(config, given)
    if names:
        raise ArlmError(unread_message(config, names[0], spell))
    by_match = config.adaptive_draft or config.lookup_first  # (drafts sized by the match: drafters.lookup_ngram)
    if "prompt_lookup_ngram" in given and by_match and config.prompt_lookup_ngram < BY_MATCH_NGRAM:
        raise ArlmError(
            f"{spell('prompt_lookup_ngram')} {config.prompt_lookup_ngram} would be raised to {BY_MATCH_NGRAM}: "
            f"{spell('adaptive_draft')} and {spell('lookup_first')} size drafts by the match's length; give "
            f"{BY_MATCH_NGRAM} or more"
        )


def unread_message(config: GenerationConfig, name: str, spell: Callable[[str], str] = str) -> str:
    """Why setting `name` is refused with config's strategy, and which strategies read it."""
    if name == "prompt_lookup_ngram" and config.strategy == "speculative":
        return f"{spell(name)} does nothing with {spell('strategy')} speculative unless {spell('lookup_first')}"
    if name in READ_BY[config.strategy]:  # a sampling knob at temperature 0
        return f"{spell(name)} does nothing at {spell('temperature')} 0 (nothing is sampled)"
    readers = [s for s, fields in READ_BY.items() if name in fields]
    return f"{spell(name)} does nothing with {spell('strategy')} {config.strategy}; it is read by {', '.join(readers)}"
