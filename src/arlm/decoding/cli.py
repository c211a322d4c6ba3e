"""`arlm generate`: text in, text out around generate(); streaming, stop strings and statistics."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch

from arlm.config import GenerationConfig
from arlm.data.tokenizers import Tokenizer
from arlm.decoding.generate import GenerationOutput, generate
from arlm.errors import ArlmError
from arlm.loading import load_model, pick_device
from arlm.model.inference import optimize_for_decoding


class Streamer:
    """Prints the text of one row as tokens arrive, after `prefix` (the prompt, written with the first token).

    Text is printed only once it is final: an incomplete UTF-8 character and any ending that could still be
    the start of a stop string are held back, and nothing from a stop string on is ever printed, so the
    printed text equals the whole output cut at its first stop string."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | None = None, stream=None, prefix: str = "") -> None:
        self.tokenizer = tokenizer
        self.stops = stops or []
        self.stream = stream or sys.stdout
        self.prefix: str | None = prefix
        self.ids: list[int] = []
        self.printed = 0
        self.stopped = False

    def __call__(self, tokens: torch.Tensor) -> None:
        self.ids.append(int(tokens.reshape(-1)[0]))
        text = self.tokenizer.decode(self.ids)
        if self.stopped or text.endswith("\ufffd"):
            return
        final = cut_at_stop(text, self.stops)
        self.stopped = len(final) < len(text)
        self._write(final if self.stopped else final[: len(final) - held_back(final, self.stops)])

    def finish(self) -> None:
        """Print what was held back (generation ended without completing a stop string), then a newline."""
        if not self.stopped:
            self._write(cut_at_stop(self.tokenizer.decode(self.ids), self.stops))
        self._write_raw("\n")

    def _write(self, text: str) -> None:
        self._write_raw(text[self.printed :])
        self.printed = max(self.printed, len(text))

    def _write_raw(self, text: str) -> None:
        if self.prefix is not None:  # the prompt goes out with the first output, after every check passed
            text, self.prefix = self.prefix + text, None
        if text:
            self.stream.write(text)
            self.stream.flush()


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest ending of text that is a proper start of a stop string (it may yet complete)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def stop_checker(tokenizer: Tokenizer, stops: list[str]):
    """A should_stop callback that fires when a row's recent text contains a stop string."""
    if not stops:
        return None
    longest = max(len(s) for s in stops)

    def should_stop(row: int, ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-(longest + 8) :])
        return any(s in tail for s in stops)

    return should_stop


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to (not including) the first stop string."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def generate_command(
    model_ref: str,
    prompts: list[str] | None,
    config: GenerationConfig | None = None,
    *,
    options: dict[str, Any] | None = None,
    draft: str | None = None,
    device: str = "auto",
    stats: bool = False,
    show_drafts: bool = False,
    dtype: str = "float32",
) -> GenerationOutput:
    """Decode and print continuations of the prompts. The settings are `config` (None: the `generate:` section
    of the model's run config) with `options` (the command-line flags) on top."""
    torch_dtype = getattr(torch, dtype)
    dev = pick_device(device)
    loaded = load_model(model_ref, device=dev, dtype=torch_dtype)
    config = with_options(config or loaded.config.generate, options)
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
    )
    if streamer:
        streamer.finish()
    else:
        _print_rows(out, texts, tok, config, show_drafts)
    if stats:
        print(format_stats(out.stats), file=sys.stderr)
    return out


def with_options(base: GenerationConfig, options: dict[str, Any] | None) -> GenerationConfig:
    """A copy of base with the given fields replaced, validated."""
    config = dataclasses.replace(base, **(options or {}))
    config.validate()
    return config


def _print_rows(
    out: GenerationOutput, texts: list[str], tok: Tokenizer, config: GenerationConfig, show_drafts: bool
) -> None:
    per_prompt = max(out.sequences.shape[0] // len(texts), 1)
    for i, row in enumerate(out.generated()):
        if show_drafts and "draft_marks" in out.stats:
            from arlm.decoding.show import render_drafts

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
