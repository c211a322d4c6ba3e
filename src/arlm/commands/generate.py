"""Generate text from a model with greedy, sampling, beam or speculative decoding.

Text in, text out around generate(): streaming, stop strings and statistics. The generation flags are
GenerationConfig's fields (`--top-k` sets top_k); chat takes them too."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import TYPE_CHECKING, Any, TextIO

from arlm.commands.options import (
    add_device_argument,
    add_draft_arguments,
    add_dtype_argument,
    add_json_argument,
    add_model_argument,
    json_schema_of,
    model_of,
    prompt_text,
)
from arlm.config import GenerationConfig, build_config, coerce
from arlm.decoding.settings import refuse_unread
from arlm.decoding.stops import check_stops, cut_at_stop, stop_checker
from arlm.decoding.text_stream import TextStream
from arlm.errors import ArlmError
from arlm.interop.dtypes import DTYPES

if TYPE_CHECKING:
    import torch

    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.grammar import JsonGrammar
    from arlm.decoding.types import GenerationOutput
    from arlm.interop.checkpoint import LoadedModel

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
CPU_COMPILE_NOTE = (
    "note: --compile on the CPU compiles for 15-110 s, then runs 1.4-2.7x slower than the eager step (docs/perf.md, "
    "'A compiled step on the CPU'); it is meant for GPUs"
)
CPU_FLOAT16_NOTE = (
    "note: float16 on the CPU runs PyTorch's own kernels, 0.3x bfloat16's speed here (docs/perf.md, 'float16 on the "
    "CPU'); bfloat16 is the 16-bit dtype arlm's kernels run"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --prompt (repeatable), --draft, --stats, --show-drafts, --device, --dtype, --json and the generation
    flags."""
    add_model_argument(parser)
    parser.add_argument(
        "--preset", help="take the defaults from this preset's generate: section (default: the run's own config)"
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=None,
        type=prompt_text,
        help="prompt text, - to read it from stdin (repeat for a batch)",
    )
    add_draft_arguments(parser)
    parser.add_argument("--stats", action="store_true", help="print tokens/s (and acceptance for speculative)")
    parser.add_argument("--show-drafts", action="store_true", help="mark tokens accepted from the draft")
    add_device_argument(parser)
    add_dtype_argument(parser)
    add_json_argument(parser)
    add_generation_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Decode the prompts and print the continuations."""
    base = build_config(args.preset).generate if args.preset else None  # None: the model's own run config
    generate_command(
        model_of(args),
        args.prompt,
        base,
        options=generation_options(args),
        draft=args.draft,
        draft_dtype=args.draft_dtype,
        device=args.device,
        stats=args.stats,
        show_drafts=args.show_drafts,
        dtype=args.dtype,
        json_schema=json_schema_of(args.json),
    )
    return 0


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


class Streamer:
    """Prints the text of one row as tokens arrive, after `prefix` (the prompt, written with the first token).

    Text is printed only once it is final (decoding.text_stream.TextStream, as the server sends it): an incomplete
    UTF-8 character and any ending that could still be the start of a stop string are held back, and nothing from
    a stop string on is ever printed, so the printed text equals the whole output cut at its first stop string."""

    def __init__(
        self, tokenizer: Tokenizer, stops: list[str] | None = None, stream: TextIO | None = None, prefix: str = ""
    ) -> None:
        self.text = TextStream(tokenizer, stops)
        self.stream = stream or sys.stdout
        self.prefix: str | None = prefix

    def __call__(self, tokens: torch.Tensor) -> None:
        self._write(self.text.push(int(tokens.reshape(-1)[0])))

    @property
    def ids(self) -> list[int]:
        """The row's ids so far."""
        return self.text.decoded.ids

    def finish(self) -> None:
        """Print what was held back (generation ended without completing a stop string), then a newline."""
        self._write(self.text.flush() + "\n")

    def _write(self, text: str) -> None:
        if self.prefix is not None:  # the prompt goes out with the first output, after every check passed
            text, self.prefix = self.prefix + text, None
        if text:
            self.stream.write(text)
            self.stream.flush()


def generate_command(
    model_ref: str,
    prompts: list[str] | None,
    config: GenerationConfig | None = None,
    *,
    options: dict[str, Any] | None = None,
    draft: str | None = None,
    draft_dtype: str | None = None,
    device: str = "auto",
    stats: bool = False,
    show_drafts: bool = False,
    dtype: str = "auto",
    json_schema: dict | None = None,
) -> GenerationOutput:
    """Decode and print continuations of the prompts. The settings are `config` (None: the `generate:` section
    of the model's run config) with `options` (the command-line flags) on top; json_schema: the output kept to
    it; draft_dtype: the draft model's (None: the target's)."""
    from arlm.decoding.generate import generate  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_decoding  # lazy: kept out of --help

    dev = pick_device(device, dtype)
    loaded = load_model(model_ref, device=dev, dtype=dtype)
    config = with_options(config or loaded.config.generate, options)
    if show_drafts and config.strategy not in ("speculative", "prompt-lookup"):
        raise ArlmError(
            f"--show-drafts does nothing with --strategy {config.strategy}; it is read by speculative, prompt-lookup"
        )
    note_dtype(dtype, dev)
    optimize_for_decoding(loaded.model)
    tok = loaded.tokenizer
    check_stops(tok, config.stop)
    texts = prompts or [""]
    ids = [tok.encode(t) or [tok.bos_id if tok.bos_id is not None else 0] for t in texts]
    _check_compile_first(config, ids, loaded.model.config.block_size, dev)
    note_unknown(tok, ids)
    draft_model = draft_for(config, draft, loaded, model_ref, dev, draft_dtype)
    grammar = grammar_for(json_schema, loaded)
    single = len(texts) == 1 and config.num_return_sequences == 1
    streaming = single and config.strategy != "beam" and not show_drafts
    streamer = Streamer(tok, config.stop, prefix=texts[0]) if streaming else None  # prints nothing before a token
    out = generate(
        loaded.model,
        ids,
        config,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        draft=draft_model,
        on_token=streamer,
        should_stop=stop_checker(tok, config.stop),
        grammar=grammar,
    )
    if streamer:
        streamer.finish()
    else:
        _print_rows(out, texts, tok, config, show_drafts)
    if stats:
        print(format_stats(out.stats), file=sys.stderr)
    return out


def _check_compile_first(config: GenerationConfig, ids: list[list[int]], block: int, device: torch.device) -> None:
    """--compile's refusals for these prompts, then (for a command that will run) the note on a CPU's compiled step."""
    from arlm.decoding.generate import check_compile, left_pad  # lazy: kept out of --help

    _, mask = left_pad(ids, 0)  # (B, T): where the prompts are padded
    check_compile(config, mask, mask.shape[1] + config.max_new_tokens, block)
    note_compile(config, device)


def grammar_for(schema: dict | None, loaded: LoadedModel) -> JsonGrammar | None:
    """The JSON grammar --json asks for over the model's tokenizer (None without it)."""
    from arlm.decoding.grammar import JsonGrammar  # lazy: kept out of --help

    return None if schema is None else JsonGrammar(loaded.tokenizer, schema, loaded.model.config.vocab_size)


def note_compile(config: GenerationConfig, device: torch.device) -> None:
    """Say on stderr that a compiled step on the CPU is slower than the eager one (it was at every dtype, with and
    without arlm's kernels)."""
    if config.compile and device.type == "cpu":
        print(CPU_COMPILE_NOTE, file=sys.stderr)


def note_dtype(dtype: str, device: torch.device) -> None:
    """Say on stderr that float16 on the CPU decodes far slower than bfloat16 (no arlm kernel takes it)."""
    if dtype == "float16" and device.type == "cpu":
        print(CPU_FLOAT16_NOTE, file=sys.stderr)


def note_unknown(tokenizer: Tokenizer, ids: list[list[int]]) -> None:
    """Say on stderr how much of the prompts a char or word tokenizer read as <unk> (the prompt is printed as typed,
    and decoding drops the <unk>: nothing else shows that the model saw something else)."""
    unk = tokenizer.own_unk_id()
    count = sum(row.count(unk) for row in ids) if unk is not None else 0
    if count:
        print(
            f"note: the tokenizer read {count} piece(s) of the prompt as <unk> (outside its vocabulary)",
            file=sys.stderr,
        )


def draft_for(
    config: GenerationConfig,
    ref: str | None,
    target: LoadedModel,
    target_ref: str,
    device: torch.device,
    dtype: str | None = None,
) -> torch.nn.Module | None:
    """The draft --strategy speculative needs (refused without --draft), None for the other strategies (refused
    with one); dtype: --draft-dtype."""
    if config.strategy != "speculative":
        if ref:
            raise ArlmError(f"--draft does nothing with --strategy {config.strategy}; it is read by speculative")
        if dtype:
            raise ArlmError("--draft-dtype does nothing without --draft MODEL and --strategy speculative")
        return None
    if not ref:
        raise ArlmError("--strategy speculative needs --draft MODEL or self:L (or use --strategy prompt-lookup)")
    return load_draft(ref, target, target_ref, device, dtype)


def load_draft(
    ref: str, target: LoadedModel, target_ref: str, device: torch.device, dtype: str | None = None
) -> torch.nn.Module:
    """The draft of speculative decoding: `self:L`, the target's own first L layers with its final norm and head
    (no weights of its own; call after optimize_for_decoding(target.model), to share its layout), `self:DTYPE`, the
    target loaded again at DTYPE (e.g. int4 drafting for float32), or a model on the target's tokenizer, loaded at
    `dtype` (None: the target's) and laid out for decoding."""
    from arlm.decoding.drafts import check_draft_vocabulary, parse_self_draft, self_draft  # lazy: kept out of --help
    from arlm.interop.loading import load_model  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_decoding  # lazy: kept out of --help

    spec = parse_self_draft(ref, DTYPES, target.dtype)
    if spec is not None and dtype:
        raise ArlmError(f"--draft-dtype is for a draft model of its own; --draft {ref} is the target's own weights")
    if isinstance(spec, int):
        return self_draft(target.model, spec)
    if spec in ("int4", "mixed") and device.type != "cpu":
        raise ArlmError(
            f"--draft self:{spec} drafts on the CPU only ({spec}'s kernels are the CPU's) and the target runs on "
            f"{device}; use --device cpu, or --draft self:{'int8' if target.dtype != 'int8' else 'bfloat16'}"
        )
    if spec is not None:
        return optimize_for_decoding(load_model(target_ref, device=device, dtype=spec).model)
    draft_loaded = load_model(ref, device=device, dtype=dtype or target.dtype)
    check_draft_vocabulary(draft_loaded.tokenizer, target.tokenizer, ref, target_ref)
    context, theirs = draft_loaded.model.config.block_size, target.model.config.block_size
    if context < theirs:
        print(
            f"note: the draft's context is {context} tokens, {target_ref}'s {theirs}: past {context} tokens of text "
            "it drafts nothing, and the target decodes alone",
            file=sys.stderr,
        )
    return optimize_for_decoding(draft_loaded.model)


def _print_rows(
    out: GenerationOutput, texts: list[str], tok: Tokenizer, config: GenerationConfig, show_drafts: bool
) -> None:
    from arlm.decoding.show import render_drafts  # lazy: kept out of --help

    per_prompt = max(out.sequences.shape[0] // len(texts), 1)
    for i, row in enumerate(out.generated()):
        body = cut_at_stop(tok.decode(row), config.stop)
        if show_drafts and "draft_marks" in out.stats:
            marks = out.stats["draft_marks"][i]
            body = render_drafts(tok, row, marks, color=sys.stdout.isatty(), end=len(body))
        score = f"  [score {float(out.scores[i]):.4f}]" if out.scores is not None else ""
        header = f"=== {i // per_prompt}.{i % per_prompt}{score}" if per_prompt > 1 or len(texts) > 1 else ""
        if header:
            print(header)
        print(texts[i // per_prompt] + body)


def format_stats(stats: dict) -> str:
    """One line of decoding statistics."""
    parts = [
        f"{stats.get('new_tokens', 0)} tokens in {stats.get('seconds', 0):.2f}s "
        f"({stats.get('tokens_per_s', 0):.1f} tokens/s)"
    ]
    if stats.get("prompt_seconds"):  # decoding alone, after the forward over the prompt
        parts.append(f"{stats['decode_tokens_per_s']:.1f} tokens/s after the prompt's {stats['prompt_seconds']:.2f}s")
    if "acceptance_rate" in stats:
        drafted = stats["proposed"]  # none: prompt lookup found no match, or adaptive drafting expected no gain
        accepted = f"acceptance {stats['acceptance_rate']:.2%} of {drafted} drafted" if drafted else "nothing drafted"
        parts.append(
            f"{accepted}, {stats['tokens_per_target_forward']:.2f} tokens per target forward, "
            f"{stats['target_forwards']} target forwards"
        )
    return "; ".join(parts)
