"""`arlm eval`: loss, perplexity and bits per byte of a model on a prepared split or on a text file."""

from __future__ import annotations

from pathlib import Path

import torch

from arlm.config import DataConfig
from arlm.data.corpus import load_documents
from arlm.data.normalize import normalize_text
from arlm.data.prepare import load_prepared
from arlm.errors import ArlmError
from arlm.evaluation.perplexity import EvalResult, evaluate_batches, result, sliding_window
from arlm.loading import load_model, pick_device
from arlm.training.logging import Progress


def eval_command(
    model_ref: str,
    *,
    split: str = "val",
    file: str | None = None,
    data_dir: str | None = None,
    context: int = 0,
    stride: int = 0,
    batches: int = 0,
    device: str = "auto",
    max_chars: int = 0,
    compare_transformers: bool = False,
    log=print,
) -> EvalResult:
    """Evaluate and print one line of figures."""
    loaded = load_model(model_ref, device=pick_device(device))
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    if file:
        text = corpus_text(file, config.data, max_chars)
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        if ids.numel() < 2:
            raise ArlmError(f"{file} holds fewer than two tokens")
        window = context or config.model.block_size
        if window > config.model.block_size:
            raise ArlmError(f"--context {window} exceeds the model's context of {config.model.block_size}")
        step = stride or max(window // 2, 1)
        res = sliding_window(
            model,
            ids,
            context=window,
            stride=step,
            device=model.tok_emb.weight.device,
            token_bytes=tokenizer.token_bytes(),
        )
        where = f"{file} (window {window}, stride {step})"
        if compare_transformers:
            from arlm.evaluation.reference import transformers_model, transformers_sliding_window

            theirs = transformers_sliding_window(transformers_model(model_ref), ids, context=window, stride=step)
            log(
                f"transformers on the same {theirs.tokens:,} tokens: loss {theirs.loss:.4f}  perplexity "
                f"{theirs.perplexity:.3f}  (ours / theirs: {res.perplexity / theirs.perplexity:.5f})"
            )
    else:
        directory = Path(data_dir) if data_dir else _run_data_dir(config)
        data = load_prepared(directory)
        if data.tokenizer.fingerprint() != tokenizer.fingerprint():
            raise ArlmError(
                f"{model_ref} was trained with another tokenizer than the data in {directory}; "
                "evaluate on data prepared with the model's tokenizer"
            )
        if not data.has_split(split):
            raise ArlmError(f"the data in {directory} has no {split} split")
        block = context or min(config.model.block_size, 1024)
        sampler = data.sampler(split, config.data, block, config.train.seed)
        progress = Progress(sampler.eval_batch_count(config.train.batch_size, batches), desc="eval", leave=False)
        sums = evaluate_batches(
            model,
            progress.iterate(sampler.eval_batches(config.train.batch_size, batches)),
            device=model.tok_emb.weight.device,
            token_bytes=tokenizer.token_bytes(),
        )
        progress.close()
        res = result(*sums)
        where = f"{split} split of {directory} (blocks of {block})"
    bpb = f"{res.bits_per_byte:.4f}" if res.bits_per_byte else "-"
    log(f"{where}: loss {res.loss:.4f}  perplexity {res.perplexity:.3f}  bits/byte {bpb}  tokens {res.tokens:,}")
    return res


def corpus_text(source: str, data: DataConfig, max_chars: int = 0) -> str:
    """The text of a corpus source (a file, folder, glob, JSONL or 'builtin'), documents joined by a blank
    line and normalized as the model's training data was; cut to max_chars when > 0."""
    docs = load_documents(source, text_field=data.text_field, encoding_errors=data.encoding_errors)
    text = normalize_text("\n\n".join(d.text.strip("\n") for d in docs), data)
    return text[:max_chars] if max_chars else text


def _run_data_dir(config) -> Path:
    return Path(config.data.prepared_dir) if config.data.prepared_dir else Path(config.train.out_dir) / "data"
