"""Generate text from a model with greedy, sampling, beam or speculative decoding.

Text in, text out around generate(): streaming, stop strings and statistics. The generation flags are
GenerationConfig's fields (`--top-k` sets top_k; commands/generation_flags.py); chat takes them too."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from arlm.commands.decoding import Streamer, draft_for, format_stats, grammar_for, note_compile, note_dtype
from arlm.commands.generation_flags import add_generation_flags, generation_options, with_options
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
from arlm.config import GenerationConfig, build_config
from arlm.decoding.stops import check_stops, cut_at_stop, stop_checker
from arlm.errors import ArlmError

if TYPE_CHECKING:
    import torch

    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.types import GenerationOutput


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
