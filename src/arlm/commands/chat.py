"""Chat with an instruct model (default: SmolLM2-135M-Instruct) through its chat template, streaming."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

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
    typed_text,
)
from arlm.config import GenerationConfig
from arlm.errors import ArlmError

if TYPE_CHECKING:  # annotations only: the session's module loads torch, kept out of --help
    from arlm.decoding.chat import ChatSession

CHAT_DEFAULTS = GenerationConfig(strategy="sample", temperature=0.7, top_p=0.9, max_new_tokens=256)
CHAT_WHERE = "defaults: chat's own, shown (max-new-tokens at most half the model's context unless given)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL (or --model), --system, --message (repeatable), --draft, --stats, --[no-]reuse-prefix, --device, --dtype,
    --json and the generation flags."""
    add_model_argument(parser, "an instruct model with a chat template", default="smollm2")
    parser.add_argument("--system", type=typed_text, help="a system message")
    parser.add_argument(
        "--message", action="append", type=typed_text, help="answer these messages in turn instead of reading input"
    )
    add_draft_arguments(parser)
    parser.add_argument("--stats", action="store_true", help="after each answer, its tokens/s and the prompt kept")
    parser.add_argument(
        "--reuse-prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the KV cache from turn to turn and encode only what it does not hold (default; equal to encoding "
        "the conversation afresh up to rounding); --no-reuse-prefix encodes it all each turn",
    )
    add_device_argument(parser)
    add_dtype_argument(parser)
    add_json_argument(parser)
    add_generation_flags(parser, CHAT_DEFAULTS, CHAT_WHERE)


def run(args: argparse.Namespace) -> int:
    """Chat with top-p sampling at temperature 0.7 unless the flags say otherwise."""
    options = generation_options(args)
    config = with_options(CHAT_DEFAULTS, options)
    chat_command(
        model_of(args),
        config,
        system=args.system,
        messages=args.message,
        draft=args.draft,
        draft_dtype=args.draft_dtype,
        device=args.device,
        dtype=args.dtype,
        reuse_prefix=args.reuse_prefix,
        json_schema=json_schema_of(args.json),
        stats=args.stats,
        read=input if sys.stdin.isatty() else _read_piped,
        fit_answer="max_new_tokens" not in options,
    )
    return 0


def chat_command(
    model_ref: str,
    config: GenerationConfig,
    *,
    system: str | None = None,
    messages: list[str] | None = None,
    draft: str | None = None,
    draft_dtype: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    reuse_prefix: bool = True,
    json_schema: dict | None = None,
    stats: bool = False,
    read: Callable[[str], str] = input,
    fit_answer: bool = False,
) -> list[str]:
    """Chat in the terminal (or answer the given messages in turn); /reset clears, /quit or EOF ends, Ctrl-C stops
    the answer being written (a second one, or one at the prompt, ends the chat); draft_dtype: the draft model's
    (None: the target's); fit_answer: max_new_tokens at most half the model's context."""
    from arlm.decoding.chat import ChatSession  # lazy: kept out of --help
    from arlm.decoding.generate import check_grammar  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_decoding  # lazy: kept out of --help

    dev = pick_device(device, dtype)
    note_compile(config, dev)
    note_dtype(dtype, dev)
    loaded = load_model(model_ref, device=dev, dtype=dtype)
    optimize_for_decoding(loaded.model)
    if fit_answer:  # (the default, 256, leaves no room for a conversation in a small model's context)
        config = _answer_within(config, loaded.model.config.block_size // 2)
    draft_model = draft_for(config, draft, loaded, model_ref, dev, draft_dtype)
    plain = loaded.config.data.format == "chat"  # fine-tuned on chat data: its own rendering, if no template
    grammar = grammar_for(json_schema, loaded)
    check_grammar(grammar, config, loaded.tokenizer.eos_id)  # once, before a line is read (each turn refused it)
    session = ChatSession(
        loaded.model, loaded.tokenizer, config, system, draft_model, plain, reuse_prefix=reuse_prefix, grammar=grammar
    )
    answers = []
    for line in _lines(messages, read):
        if line.strip() in ("/quit", "/exit"):
            break
        if (answer := _turn(session, line, messages is None, stats)) is not None:
            answers.append(answer)
    return answers


def _turn(session: ChatSession, line: str, typed: bool, stats: bool) -> str | None:
    """Answer one line (streamed, with its stats if asked), or act on /reset; the answer, or None (none: a blank
    line, /reset, or a message refused while typed in)."""
    if not line.strip() or line.strip() == "/reset":  # (Enter alone: nothing to answer)
        if line.strip():
            session.turns = []
        return None
    streamer = Streamer(session.tokenizer, session.config.stop, prefix="assistant> ")  # (the cue after the checks)
    try:
        with _interruptible(typed) as interrupted:
            answer = session.reply(line, on_token=streamer, cancel=interrupted)
    except ArlmError as exc:  # typed in: say why, and go on with the conversation as it was
        if not typed:
            raise
        if streamer.prefix is None:  # (the cue and part of an answer were written: end their line)
            print(flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return None
    streamer.finish()
    if session.dropped:  # (said, not silent: the model no longer sees what was said first)
        context, answer_room = session.model.config.block_size, session.config.max_new_tokens
        print(
            f"note: the conversation outgrew the model's context ({context} tokens, {answer_room} of them kept for the "
            f"answer): its {session.dropped} oldest exchange(s) were dropped; /reset starts afresh",
            file=sys.stderr,
        )
    if stats:
        last = session.stats
        kept = f"{last['reused_tokens']} of {last['prompt_tokens']} prompt tokens kept from the last turn"
        print(f"{format_stats(last)}; {kept}", file=sys.stderr)
    return answer


def _answer_within(config: GenerationConfig, most: int) -> GenerationConfig:
    """config with max_new_tokens at most `most`."""
    return dataclasses.replace(config, max_new_tokens=min(config.max_new_tokens, most))


@contextlib.contextmanager
def _interruptible(typed: bool) -> Iterator[Callable[[], bool] | None]:
    """While typed in a terminal: the first Ctrl-C (SIGINT) only marks the answer to stop, as in llama.cpp's chat;
    yields whether it came (None where SIGINT stays as it is: given messages, a thread other than the main, or a
    process started with SIGINT ignored, as `arlm chat &` is, which keeps ignoring it)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    if not typed or before in (None, signal.SIG_IGN):
        yield None
        return
    came = threading.Event()

    def stop_answer(signum: int, frame: object) -> None:
        came.set()
        signal.signal(signal.SIGINT, before)  # a second Ctrl-C interrupts as before (a long prompt's encoding)

    signal.signal(signal.SIGINT, stop_answer)
    try:
        yield came.is_set
    finally:
        signal.signal(signal.SIGINT, before)


def _read_piped(prompt: str) -> str:
    """A line of piped input, without the "you> " prompt (as Python's REPL shows none when stdin is no terminal), and
    without the CR of a Windows line end (input() drops only the LF)."""
    return input().removesuffix("\r")


def _lines(messages: list[str] | None, read: Callable[[str], str]) -> Iterator[str]:
    """The user's messages: those given, else each line typed after the "you> " prompt until Ctrl-D."""
    if messages is not None:
        yield from messages
        return
    while True:
        try:
            yield typed_text(read("you> "))
        except EOFError:  # Ctrl-D
            print()  # the shell's prompt then starts a line of its own
            return
