"""Loss, perplexity and bits per byte of a model on a prepared split or a text file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.options import (
    add_device_argument,
    add_dtype_argument,
    add_model_argument,
    check_batches,
    model_of,
    refuse_unused,
)
from arlm.config import KV_DTYPES
from arlm.errors import ArlmError
from arlm.evaluation.defaults import SPLIT_BLOCK
from arlm.training.logging import Progress

if TYPE_CHECKING:
    import torch

    from arlm.evaluation.perplexity import EvalResult
    from arlm.interop.loading import LoadedModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --split / --data, or --file with --max-chars and --compare-transformers; --context, --stride, ..."""
    add_model_argument(parser)
    parser.add_argument("--split", choices=("train", "val", "test"), help="prepared split to score (default: val)")
    parser.add_argument("--data", help="prepared data folder (default: the one the run was trained on)")
    parser.add_argument("--file", help="score this corpus (file, folder, glob, JSONL or builtin) by sliding window")
    parser.add_argument("--max-chars", type=int, default=0, help="with --file: only the first N characters")
    parser.add_argument(
        "--encoding-errors",
        choices=("strict", "replace"),
        help="with --file: invalid UTF-8 refused (strict) or read as U+FFFD (default: the model's data setting)",
    )
    parser.add_argument(
        "--compare-transformers",
        action="store_true",
        help="with --file: also score the same windows with transformers' own loading of the model",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=0,
        help="window (--file) / block length (default: the model's context; on a split at most 1024)",
    )
    parser.add_argument(
        "--stride", type=int, default=0, help="with --file: window stride, at most the window (default: half of it)"
    )
    parser.add_argument("--batches", type=int, default=0, help="on a split: at most this many batches (0: all)")
    add_device_argument(parser)
    add_dtype_argument(parser)
    kv_help = "with --file: each window over a KV cache of this dtype, as decoding reads it (default auto: none)"
    parser.add_argument("--kv-dtype", default="auto", choices=KV_DTYPES, help=kv_help)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one line of figures."""
    eval_command(
        model_of(args),
        split=args.split,
        file=args.file,
        data_dir=args.data,
        context=args.context,
        stride=args.stride,
        batches=args.batches,
        device=args.device,
        dtype=args.dtype,
        max_chars=args.max_chars,
        encoding_errors=args.encoding_errors,
        compare_transformers=args.compare_transformers,
        kv_dtype=args.kv_dtype,
    )
    return 0


def eval_command(
    model_ref: str,
    *,
    split: str | None = None,
    file: str | None = None,
    data_dir: str | None = None,
    context: int = 0,
    stride: int = 0,
    batches: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    max_chars: int = 0,
    encoding_errors: str | None = None,
    compare_transformers: bool = False,
    kv_dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Evaluate and print one line of figures (a split: val unless split is given; or a file)."""
    from arlm.decoding.engine import cache_dtype  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_scoring  # lazy: kept out of --help

    kv = cache_dtype(kv_dtype)
    _check_options(file, split, data_dir, context, stride, batches, max_chars, compare_transformers, kv)
    refuse_unused({"--encoding-errors": encoding_errors is not None and not file}, "with --file")
    loaded = load_model(model_ref, device=pick_device(device, dtype), dtype=dtype)
    optimize_for_scoring(loaded.model)  # 16-bit: on the kernels generate samples with
    if encoding_errors is not None:
        loaded.config.data.encoding_errors = encoding_errors  # (the file is read as the model's data otherwise)
    if file:
        res, where = _on_file(loaded, model_ref, file, context, stride, max_chars, kv, compare_transformers, log)
    else:
        res, where = _on_split(loaded, split or "val", data_dir, context, batches)
    bpb = f"{res.bits_per_byte:.4f}" if res.bits_per_byte else "-"
    log(f"{where}: loss {res.loss:.4f}  perplexity {res.perplexity:.3f}  bits/byte {bpb}  tokens {res.tokens:,}")
    if res.bytes < 0:
        log("bits/byte: unknown, the tokenizer read part of the text as <unk> (the bytes it stands for are not known)")
    return res


def _check_options(
    file: str | None,
    split: str | None,
    data_dir: str | None,
    context: int,
    stride: int,
    batches: int,
    max_chars: int,
    compare_transformers: bool,
    kv: torch.dtype | None,
) -> None:
    """Refuse negative values and the options the chosen mode (a split or --file) would not read."""
    for flag, value in (("--context", context), ("--stride", stride), ("--max-chars", max_chars)):
        if value < 0:
            raise ArlmError(f"{flag} {value}: give a positive number (0 or left out: the default)")
    check_batches(batches)
    if file:
        on_split = {"--split": split is not None, "--data": data_dir is not None, "--batches": batches != 0}
        refuse_unused(on_split, "with a prepared split, not with --file")
    else:
        with_file = {"--stride": stride != 0, "--max-chars": max_chars != 0}
        with_file |= {"--compare-transformers": compare_transformers, "--kv-dtype": kv is not None}
        refuse_unused(with_file, "with --file")
        if data_dir is not None and Path(data_dir).is_file():
            raise ArlmError(f"--data takes a prepared folder; {data_dir} is a file: score it with --file {data_dir}")


def window_and_stride(block_size: int, context: int, stride: int, *, on_file: bool) -> tuple[int, int]:
    """The window (or block) and stride to score with: refused beyond the model's context, or a stride past
    the window (the tokens between windows would go unscored)."""
    window = context or (block_size if on_file else min(block_size, SPLIT_BLOCK))
    if window > block_size:
        raise ArlmError(f"--context {window} exceeds the model's context of {block_size}")
    step = stride or max(window // 2, 1)
    if step > window:
        raise ArlmError(f"--stride {step} exceeds the window of {window}: tokens between windows would go unscored")
    return window, step


def _on_file(
    loaded: LoadedModel,
    model_ref: str,
    file: str,
    context: int,
    stride: int,
    max_chars: int,
    kv: torch.dtype | None,
    compare_transformers: bool,
    log: Callable[[str], None],
) -> tuple[EvalResult, str]:
    """Sliding-window perplexity of a corpus normalized as the model's training data was (a progress bar on a
    terminal), each window over a KV cache of dtype kv where given; with compare_transformers, transformers' own
    loading of the model scores the same windows."""
    import torch  # lazy: kept out of --help

    from arlm.data.normalize import corpus_text  # lazy: kept out of --help
    from arlm.evaluation.perplexity import sliding_window, sliding_windows  # lazy: kept out of --help
    from arlm.evaluation.reference import transformers_sliding_window  # lazy: kept out of --help
    from arlm.interop.loading import load_transformers_model  # lazy: kept out of --help

    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    text = corpus_text(file, config.data, max_chars)
    ids = torch.tensor(tokenizer.encode_literally(text), dtype=torch.long)  # (special text: text)
    if ids.numel() < 2:
        raise ArlmError(f"{file} holds fewer than two tokens")
    window, step = window_and_stride(config.model.block_size, context, stride, on_file=True)
    progress = Progress(len(sliding_windows(ids.numel(), window, step)), desc="eval")
    res = sliding_window(
        model,
        ids,
        context=window,
        stride=step,
        device=model.norm.weight.device,
        token_bytes=tokenizer.token_bytes(),
        on_window=lambda done, _total: progress.update(done),
        kv_dtype=kv,
    )
    progress.close()
    if compare_transformers:
        theirs = transformers_sliding_window(load_transformers_model(model_ref), ids, context=window, stride=step)
        log(
            f"transformers on the same {theirs.tokens:,} tokens: loss {theirs.loss:.4f}  perplexity "
            f"{theirs.perplexity:.3f}  (ours / theirs: {res.perplexity / theirs.perplexity:.5f})"
        )
    cached = f", {str(kv).removeprefix('torch.')} KV cache" if kv is not None else ""
    return res, f"{file} (window {window}, stride {step}{cached})"


def _on_split(
    loaded: LoadedModel, split: str, data_dir: str | None, context: int, batches: int
) -> tuple[EvalResult, str]:
    """Loss over blocks of a prepared split (the run's own data unless data_dir)."""
    from arlm.evaluation.perplexity import evaluate_batches, result, scoring_parts  # lazy: kept out of --help
    from arlm.interop.loading import run_data  # lazy: kept out of --help

    config = loaded.config
    data = run_data(loaded, split, data_dir, hint="give --data DIR or --file FILE")
    block, _ = window_and_stride(config.model.block_size, context, 0, on_file=False)
    sampler = data.sampler(split, config.data, block, config.train.seed)
    progress = Progress(sampler.eval_batch_count(config.train.batch_size, batches), desc="eval", leave=False)
    blocks = progress.iterate(sampler.eval_batches(config.train.batch_size, batches))
    sums = evaluate_batches(  # (a forward's rows kept to what their logits' budget holds)
        loaded.model,
        scoring_parts(loaded.model, blocks),
        device=loaded.model.norm.weight.device,
        token_bytes=loaded.tokenizer.token_bytes(),
    )
    progress.close()
    return result(*sums), f"{split} split of {data.directory} (blocks of {block})"
