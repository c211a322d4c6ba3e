"""What a decoding command needs beside generate() (generate and chat; serve: the draft and the dtype note): the draft
model --strategy speculative reads, the JSON grammar of --json, notes on slow CPU settings, the streamed text and
the statistics line."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from arlm.decoding.text_stream import TextStream
from arlm.errors import ArlmError
from arlm.interop.dtypes import DTYPES

if TYPE_CHECKING:
    import torch

    from arlm.config import GenerationConfig
    from arlm.data.tokenizers import Tokenizer
    from arlm.decoding.grammar import JsonGrammar
    from arlm.interop.checkpoint import LoadedModel


CPU_COMPILE_NOTE = (
    "note: --compile on the CPU compiles for 15-110 s, then runs 1.4-2.7x slower than the eager step (docs/perf.md, "
    "'A compiled step on the CPU'); it is meant for GPUs"
)

CPU_FLOAT16_NOTE = (
    "note: float16 on the CPU runs PyTorch's own kernels, 0.3x bfloat16's speed here (docs/perf.md, 'float16 on the "
    "CPU'); bfloat16 is the 16-bit dtype arlm's kernels run"
)


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
