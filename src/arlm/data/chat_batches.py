"""Chat data on disk and in batches: prepared conversations (ids, target flags, source lines per split) and
deterministic batches of whole conversations, packed with document masks or one a row, padded.

A packed row holds several conversations; each attends only to itself (a (B, T, T) document mask) and counts its
positions from 0 (the model restarts positions under a document mask), so it trains as if it were alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from arlm.config import DataConfig
from arlm.data.batches import IGNORE_INDEX, Batch, BatchSampler, without_targets
from arlm.data.chat import (
    ChatExample,
    normalize_examples,
    read_chat_jsonl,
    refuse_text_only_settings,
    render_example,
)
from arlm.data.chat_template import PLAIN_TEMPLATE, apply_chat_template
from arlm.data.normalize import NormalizeReport
from arlm.data.shards import ShardWriter, read_shard
from arlm.data.tokenizers import Tokenizer, train_tokenizer
from arlm.errors import ArlmError


def distinct_examples(examples: list[ChatExample]) -> list[ChatExample]:
    """The conversations but exact repeats of an earlier one (the same messages, after normalization), so that no
    conversation lands in two splits: a validation loss measured on conversations trained on says nothing."""
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = json.dumps(example.messages, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def split_examples(examples: list[ChatExample], config: DataConfig) -> dict[str, list[ChatExample]]:
    """A seeded split of whole conversations (distinct ones: distinct_examples) into train / val / test by
    data.val_fraction and test_fraction."""
    order = np.random.default_rng([config.seed, 11]).permutation(len(examples))
    n_val, n_test = round(len(examples) * config.val_fraction), round(len(examples) * config.test_fraction)
    if n_val + n_test >= len(examples):
        raise ArlmError(f"{config.source} holds {len(examples)} conversations, too few to leave any for training")
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {name: [examples[i] for i in sorted(idx)] for name, idx in parts.items()}


def prepare_chat(
    config: DataConfig, out: Path, resolve: Callable[[str], Tokenizer], block_size: int = 1
) -> tuple[Tokenizer, dict[str, dict], dict[str, np.ndarray], NormalizeReport, int]:
    """Read, normalize, split, render and write the conversations of data.source into `out`: per split a token
    shard, the conversations' start offsets, target flags and source lines; returns the tokenizer, counts,
    histograms, what normalization changed and how many exact repeats of a conversation were dropped."""
    refuse_text_only_settings(config)
    examples = list(read_chat_jsonl(config.source, config.encoding_errors))
    norm = normalize_examples(examples, config)
    distinct = distinct_examples(examples)
    dropped = len(examples) - len(distinct)
    splits = split_examples(distinct, config)
    texts = (apply_chat_template(PLAIN_TEMPLATE, e.messages, False) for e in splits["train"])
    tokenizer = train_tokenizer(config.tokenizer, texts, config.vocab_size, resolve)
    tokenizer.save(out / "tokenizer")
    counts, hists = {}, {}
    for name, examples in splits.items():
        counts[name], hists[name] = _write_chat_split(out, name, examples, tokenizer, config.source)
        if block_size > 1 and examples:
            sampler = open_chat_split(out, name, config, block_size, seed=0)
            cut = {"truncated": sampler.truncated, "cut_targets": sampler.cut_targets}
            counts[name] |= {"target_tokens": sampler.targets, **cut}
    return tokenizer, counts, hists, norm, dropped


def _write_chat_split(
    out: Path, name: str, examples: list[ChatExample], tokenizer: Tokenizer, source: str
) -> tuple[dict, np.ndarray]:
    """One split's conversations rendered into its shard and .docs / .targets / .lines arrays (a conversation the
    template cannot render refused naming its line of `source`)."""
    starts, targets, lines = [0], [], []
    chars = nbytes = 0
    hist = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    with ShardWriter(out / f"{name}.bin", tokenizer.vocab_size) as writer:
        for example in examples:
            try:
                ids, flags = render_example(example.messages, tokenizer)
            except ArlmError as exc:
                raise ArlmError(f"{source}:{example.line}: {exc}") from None
            writer.append(ids)
            hist += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tokenizer.vocab_size)[: tokenizer.vocab_size]
            starts.append(writer.count)
            targets.extend(flags)
            lines.append(example.line)
            text = tokenizer.decode(ids)  # the rendered conversation, as its tokens count it (special tokens aside)
            chars, nbytes = chars + len(text), nbytes + len(text.encode("utf-8"))
    for kind, values, dtype in (("docs", starts, np.int64), ("targets", targets, np.uint8), ("lines", lines, np.int64)):
        np.save(out / f"{name}.{kind}.npy", np.asarray(values, dtype=dtype), allow_pickle=False)
    record = {"documents": len(examples), "characters": chars, "bytes": nbytes, "tokens": int(starts[-1])}
    return record | {"target_tokens": int(sum(targets))}, hist


def open_chat_split(
    directory: Path, split: str, config: DataConfig, block_size: int, seed: int, pad_id: int | None = None
) -> ChatSampler:
    """The ChatSampler of a prepared split."""
    arrays = {k: np.load(directory / f"{split}.{k}.npy", allow_pickle=False) for k in ("docs", "targets", "lines")}
    return ChatSampler(
        read_shard(directory / f"{split}.bin"), arrays["docs"], arrays["targets"], arrays["lines"],
        source=config.source, block_size=block_size, seed=seed, mode=config.mode, pad_to=config.pad_to,
        train_on=config.train_on, pad_id=pad_id,
    )  # fmt: skip


class ChatSampler:
    """Deterministic batches of whole conversations (the same interface as BatchSampler)."""

    def __init__(
        self,
        tokens: np.ndarray,
        doc_starts: np.ndarray,
        targets: np.ndarray,
        lines: np.ndarray,
        *,
        source: str,
        block_size: int,
        seed: int,
        mode: str = "packed",
        pad_to: str = "longest",
        train_on: str = "assistant",
        pad_id: int | None = None,
    ) -> None:
        self.block_size, self.seed, self.mode, self.pad_to = block_size, seed, mode, pad_to
        self.pad_id = 0 if pad_id is None else pad_id
        self.truncated = 0  # conversations cut to the context (some of their targets lost)
        self.targets = self.cut_targets = 0  # target tokens in the rows, and past the context (never trained on)
        self.examples: list[tuple[np.ndarray, np.ndarray]] = []  # (inputs (L,), targets (L,)) per conversation
        for d in range(len(doc_starts) - 1):
            a, b = int(doc_starts[d]), int(doc_starts[d + 1])
            ids = np.asarray(tokens[a:b], dtype=np.int64)
            keep = np.ones(b - a, dtype=bool) if train_on == "all" else np.asarray(targets[a:b], dtype=bool)
            x, y = ids[:-1], np.where(keep[1:], ids[1:], IGNORE_INDEX)  # (L,) each, L = length - 1
            if len(x) > block_size:
                if not (y[:block_size] != IGNORE_INDEX).any():
                    first = int(np.argmax(y != IGNORE_INDEX)) + 2  # counted from 1 in the conversation's ids
                    raise ArlmError(
                        f"{source}:{int(lines[d])}: the first answer token is token {first}, beyond the "
                        f"{block_size + 1} a row holds (model.block_size {block_size}, and the token it predicts); "
                        "shorten the conversation or raise model.block_size"
                    )
                lost = int((y[block_size:] != IGNORE_INDEX).sum())
                self.truncated, self.cut_targets = self.truncated + (lost > 0), self.cut_targets + lost
                x, y = x[:block_size], y[:block_size]
            self.targets += int((y != IGNORE_INDEX).sum())
            self.examples.append((x, y))
        self.rows = self._pack() if mode == "packed" else [[i] for i in range(len(self.examples))]
        self._epochs: dict[int, np.ndarray] = {}

    def _pack(self) -> list[list[int]]:
        """Conversations in a seeded order, each row filled until the next one would not fit (next fit)."""
        rows, row, used = [], [], 0
        for i in np.random.default_rng([self.seed, 7]).permutation(len(self.examples)):
            length = len(self.examples[i][0])
            if row and used + length > self.block_size:
                rows.append(row)
                row, used = [], 0
            row.append(int(i))
            used += length
        return rows + ([row] if row else [])

    def batch(self, step: int, global_rows: int, part: int = 0, parts: int = 1) -> Batch:
        """Rows [part*n, (part+1)*n) of step `step`'s global batch, n = global_rows/parts (shuffled epochs)."""
        n, per_part = len(self.rows), global_rows // parts
        k = np.arange(step * global_rows, (step + 1) * global_rows)[part * per_part : (part + 1) * per_part]
        return self.make_batch([self.rows[int(self._permutation(int(i // n))[i % n])] for i in k])

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            self._epochs = {epoch: np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(len(self.rows))}
        return self._epochs[epoch]

    def make_batch(self, rows: list[list[int]]) -> Batch:
        """Rows of conversations as (x, y) right-padded, with a (B, T, T) document mask when packed or a (B, T)
        padding mask when each row holds one conversation."""
        lengths = [sum(len(self.examples[i][0]) for i in row) for row in rows]
        T = self.block_size if self.pad_to == "block" else max(lengths)
        x = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        doc = torch.full((len(rows), T), -1, dtype=torch.long)  # conversation index in its row; -1: padding
        for r, row in enumerate(rows):
            at = 0
            for j, i in enumerate(row):
                ex_x, ex_y = self.examples[i]
                x[r, at : at + len(ex_x)], y[r, at : at + len(ex_x)] = torch.from_numpy(ex_x), torch.from_numpy(ex_y)
                doc[r, at : at + len(ex_x)] = j
                at += len(ex_x)
        if self.mode == "packed":
            return Batch(x, y, doc[:, :, None] == doc[:, None, :])  # (B, T, T)
        return Batch(x, y, (doc >= 0).long())  # (B, T)

    def eval_batches(self, batch_size: int, max_batches: int = 0, *, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Every row in order (an evenly spaced subset when max_batches > 0); with world > 1, this rank's share."""
        units = self._eval_units(batch_size, max_batches)
        for start, counted in BatchSampler._eval_starts(len(units), batch_size, rank, world):
            batch = self.make_batch([self.rows[int(u)] for u in units[start : start + batch_size]])
            yield batch if counted else without_targets(batch)

    def eval_batch_count(self, batch_size: int, max_batches: int = 0, *, rank: int = 0, world: int = 1) -> int:
        """How many batches eval_batches yields."""
        return len(BatchSampler._eval_starts(len(self._eval_units(batch_size, max_batches)), batch_size, rank, world))

    def _eval_units(self, batch_size: int, max_batches: int) -> np.ndarray:
        units = np.arange(len(self.rows))
        if max_batches and len(units) > max_batches * batch_size:
            units = units[np.linspace(0, len(units) - 1, max_batches * batch_size).round().astype(np.int64)]
        return units
