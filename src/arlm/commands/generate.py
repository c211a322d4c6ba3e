"""Generate text from a model with greedy, sampling, beam or speculative decoding.

Text in, text out around generate(): streaming, stop strings and statistics. The generation flags are
GenerationConfig's fields (`--top-k` sets top_k); chat takes them too."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

import torch

from arlm.config import GenerationConfig, coerce
from arlm.data.tokenizers import Tokenizer
from arlm.decoding.generate import generate
from arlm.decoding.show import render_drafts
from arlm.decoding.stops import cut_at_stop, stop_checker
from arlm.decoding.types import GenerationOutput
from arlm.errors import ArlmError
from arlm.interop.loading import load_model, pick_device
from arlm.model.inference import optimize_for_decoding

MODEL_HELP = "checkpoint, run folder, HF folder, GGUF file or 'smollm2'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --prompt (repeatable), --draft, --stats, --show-drafts, --device, --dtype and the generation flags."""
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a batch)")
    parser.add_argument("--draft", help="draft model for --strategy speculative")
    parser.add_argument("--stats", action="store_true", help="print tokens/s (and acceptance for speculative)")
    parser.add_argument("--show-drafts", action="store_true", help="mark tokens accepted from the draft")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    add_generation_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Decode the prompts and print the continuations."""
    generate_command(
        args.model,
        args.prompt,
        generation_config(args),
        draft=args.draft,
        device=args.device,
        stats=args.stats,
        show_drafts=args.show_drafts,
        dtype=args.dtype,
    )
    return 0


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per GenerationConfig field (--max-new-tokens for max_new_tokens; --stop repeats)."""
    for f in dataclasses.fields(GenerationConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"gen_{f.name}",
            default=None,
            action="append" if f.name == "stop" else None,
            metavar=f.name.upper(),
            help=f"(default {f.default if f.default is not dataclasses.MISSING else '[]'})",
        )


def generation_config(args: argparse.Namespace, base: GenerationConfig | None = None) -> GenerationConfig:
    """`base` (default GenerationConfig()) with the generation flags given, validated."""
    config = base or GenerationConfig()
    hints = typing.get_type_hints(GenerationConfig)
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f"gen_{f.name}")
        if value is not None:
            setattr(config, f.name, coerce(value, hints[f.name], "--" + f.name.replace("_", "-")))
    config.validate()
    return config


class Streamer:
    """Prints the text of one row as tokens arrive (holding back an incomplete UTF-8 character)."""

    def __init__(self, tokenizer: Tokenizer, stream=None) -> None:
        self.tokenizer = tokenizer
        self.stream = stream or sys.stdout
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, tokens: torch.Tensor) -> None:
        self.ids.append(int(tokens.reshape(-1)[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.stream.write(text[self.printed :])
        self.stream.flush()
        self.printed = len(text)


def generate_command(
    model_ref: str,
    prompts: list[str] | None,
    config: GenerationConfig,
    *,
    draft: str | None = None,
    device: str = "auto",
    stats: bool = False,
    show_drafts: bool = False,
    dtype: str = "float32",
) -> GenerationOutput:
    """Decode and print continuations of the prompts."""
    torch_dtype = getattr(torch, dtype)
    dev = pick_device(device)
    loaded = load_model(model_ref, device=dev, dtype=torch_dtype)
    optimize_for_decoding(loaded.model)
    tok = loaded.tokenizer
    texts = prompts or [""]
    ids = [tok.encode(t) or [tok.bos_id if tok.bos_id is not None else 0] for t in texts]
    draft_model = None
    if config.strategy == "speculative":
        if not draft:
            raise ArlmError("--strategy speculative needs --draft MODEL (or use --strategy prompt-lookup)")
        draft_loaded = load_model(draft, device=dev, dtype=torch_dtype)
        if draft_loaded.tokenizer.fingerprint() != tok.fingerprint():
            raise ArlmError(f"the draft {draft} uses another vocabulary than {model_ref}; they must share a tokenizer")
        draft_model = optimize_for_decoding(draft_loaded.model)
    streaming = len(texts) == 1 and config.strategy != "beam" and not show_drafts
    streamer = Streamer(tok) if streaming else None
    if streamer:
        sys.stdout.write(texts[0])
    out = generate(
        loaded.model,
        ids,
        config,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        draft=draft_model,
        on_token=streamer,
        should_stop=stop_checker(tok, config.stop),
    )
    if streamer:
        sys.stdout.write("\n")
    else:
        _print_rows(out, texts, tok, config, show_drafts)
    if stats:
        print(format_stats(out.stats), file=sys.stderr)
    return out


def _print_rows(
    out: GenerationOutput, texts: list[str], tok: Tokenizer, config: GenerationConfig, show_drafts: bool
) -> None:
    per_prompt = max(out.sequences.shape[0] // len(texts), 1)
    for i, row in enumerate(out.generated()):
        if show_drafts and "draft_marks" in out.stats:
            body = render_drafts(tok, row, out.stats["draft_marks"][i], color=sys.stdout.isatty())
        else:
            body = cut_at_stop(tok.decode(row), config.stop)
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
    if "acceptance_rate" in stats:
        parts.append(
            f"acceptance {stats['acceptance_rate']:.2%}, {stats['tokens_per_target_forward']:.2f} tokens "
            f"per target forward, {stats['target_forwards']} target forwards"
        )
    return "; ".join(parts)
