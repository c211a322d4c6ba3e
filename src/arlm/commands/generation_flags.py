"""The generation flags that generate and chat share: one per GenerationConfig field (`--top-k` sets top_k), read to
their types and laid over a base config, a refusal naming the flags as typed."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

from arlm.config import GenerationConfig, coerce
from arlm.decoding.settings import refuse_unread
from arlm.errors import ArlmError

FLAG_HELP = {  # one line per GenerationConfig field, for --help
    "strategy": "greedy, sample, beam, speculative (a --draft) or prompt-lookup",
    "max_new_tokens": "tokens to generate at most (0: the prompt back, nothing new)",
    "min_new_tokens": "EOS is masked until this many tokens are out",
    "temperature": "sampling temperature (0: the most likely token, as greedy)",
    "top_k": "sample among the k most likely tokens (0: off)",
    "top_p": "sample within the smallest set holding this much probability (1: off)",
    "min_p": "drop tokens below this fraction of the top token's probability (0: off)",
    "repetition_penalty": "CTRL's: tokens already in the text have a positive score divided by it, a negative one "
    "multiplied (1: off)",
    "no_repeat_ngram_size": "never repeat an n-gram of this size (0: off)",
    "num_beams": "beams of --strategy beam",
    "num_return_sequences": "samples per prompt (sample) or best beams returned (beam)",
    "length_penalty": "beam: a finished beam's score is divided by its length to this power",
    "early_stopping": "beam: true, false or never (as transformers)",
    "stop": "stop at this string (repeat for several)",
    "stop_at_eos": "stop at the end-of-sequence token",
    "seed": "seed of the sampling generator (reproducible draws)",
    "num_draft_tokens": "speculative / prompt-lookup: tokens drafted a round (gamma); with --adaptive-draft, the "
    "most a round, where above the adaptive rule's own cap of 16",
    "adaptive_draft": "speculative / prompt-lookup: how many to draft each round, from the acceptance so far and the "
    "cost of a verification (none where drafting would not pay)",
    "prompt_lookup_ngram": "prompt-lookup: the longest n-gram of the context matched (at least 4 with "
    "--adaptive-draft or --lookup-first, which size drafts by the match's length)",
    "lookup_first": "speculative: prompt lookup's tokens where the context recurs, the draft's elsewhere",
    "compile": "greedy / sample: a torch.compile'd one-token step (CUDA graphs on a GPU; slower on the CPU)",
    "kv_dtype": "the KV cache's dtype: auto (the model's float dtype), float32 or bfloat16",
}

RUN_DEFAULTS = "defaults: an arlm run's own generate: section (its run config), else the ones shown"


def add_generation_flags(
    parser: argparse.ArgumentParser, defaults: GenerationConfig | None = None, where: str = RUN_DEFAULTS
) -> None:
    """One flag per GenerationConfig field (--max-new-tokens for max_new_tokens; --stop repeats; a yes/no field's
    flag alone means true: --adaptive-draft, or --adaptive-draft false), each showing its default in `defaults` (None:
    GenerationConfig's), under a heading saying where the defaults come from."""
    hints = typing.get_type_hints(GenerationConfig)
    defaults, group = defaults or GenerationConfig(), parser.add_argument_group("generation settings", where)
    for f in dataclasses.fields(GenerationConfig):
        switch, default = hints[f.name] is bool, getattr(defaults, f.name)
        group.add_argument(
            flag_name(f.name),
            dest=f"gen_{f.name}",
            default=None,
            action="append" if f.name == "stop" else None,
            nargs="?" if switch else None,
            const="true" if switch else None,
            metavar=f.name.upper(),
            help=f"{FLAG_HELP[f.name]} (default {default})",
        )


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings given as flags, read to their types."""
    hints = typing.get_type_hints(GenerationConfig)
    options = {}
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f"gen_{f.name}")
        if value is not None:
            options[f.name] = coerce(value, hints[f.name], flag_name(f.name))
    return options


def with_options(base: GenerationConfig, options: dict[str, Any] | None) -> GenerationConfig:
    """A copy of base with the given fields replaced, validated (a refusal names the flags, not the fields); a flag
    the strategy would not read is refused."""
    config = dataclasses.replace(base, **(options or {}))
    try:
        config.validate()
    except ArlmError as exc:
        raise ArlmError(as_flags(str(exc), set(options or {}), exc.param), param=exc.param, code=exc.code) from None
    refuse_unread(config, options or {}, spell=flag_name)
    return config


def flag_name(field: str) -> str:
    """The flag of a GenerationConfig field: --max-new-tokens for max_new_tokens."""
    return "--" + field.replace("_", "-")


def as_flags(message: str, given: set[str], param: str | None = None) -> str:
    """A GenerationConfig refusal as the command line says it: each field `given` as a flag spelled as its flag,
    where the message names it with an underscore (min_new_tokens) or begins with it (the refusal's `param`:
    temperature); a field from the run's config.json keeps its name."""
    names = sorted((f.name for f in dataclasses.fields(GenerationConfig) if "_" in f.name and f.name in given), key=len)
    if names:
        message = re.sub(rf"\b({'|'.join(reversed(names))})\b", lambda match: flag_name(match[1]), message)
    if param in given and "_" not in param and message.startswith(f"{param} "):
        message = flag_name(param) + message[len(param) :]
    return message
