"""(input, target) batches from token shards: packed blocks or padded rows, as pure functions of the step.

The rows of optimizer step `s` depend only on (seed, s, global batch), never on a hidden iterator, so a
resumed run (or one with another number of processes and the same global batch) sees the same data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100  # targets with this value add nothing to the loss


@dataclass
class Batch:
    """Inputs, shifted targets and an optional attention mask."""

    x: torch.Tensor  # (B, T) int64 input ids
    y: torch.Tensor  # (B, T) int64 target ids; IGNORE_INDEX where nothing is to be predicted
    attention_mask: torch.Tensor | None = None  # (B, T) 1 = real token, or (B, T, T) bool document mask

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on another device."""
        mask = None if self.attention_mask is None else self.attention_mask.to(device, non_blocking=True)
        return Batch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True), mask)

    def split_rows(self, rows: int) -> list[Batch]:
        """The batch cut into batches of at most `rows` rows each (a forward's logits kept to a size)."""
        mask = self.attention_mask
        return [
            Batch(self.x[i : i + rows], self.y[i : i + rows], None if mask is None else mask[i : i + rows])
            for i in range(0, self.x.shape[0], max(rows, 1))
        ]

    @property
    def num_targets(self) -> int:
        """Number of predicted (non-ignored) positions."""
        return int((self.y != IGNORE_INDEX).sum())


class BatchSampler:
    """Deterministic batches from one split of a prepared corpus."""

    def __init__(
        self,
        tokens: np.ndarray,
        doc_starts: np.ndarray,
        *,
        block_size: int,
        seed: int,
        mode: str = "packed",
        sampling: str = "random",
        pad_to: str = "longest",
        document_mask: bool = False,
        eos_id: int | None = None,
        bos_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        self.tokens = tokens
        self.doc_starts = np.asarray(doc_starts, dtype=np.int64)  # start offsets, plus len(tokens) at the end
        self.block_size = block_size
        self.seed = seed
        self.mode = mode
        self.sampling = sampling
        self.pad_to = pad_to
        self.document_mask = document_mask
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.pad_id = 0 if pad_id is None else pad_id
        self._perm_cache: dict[int, np.ndarray] = {}

    @property
    def num_units(self) -> int:
        """Sampling units: start offsets (random packed), whole blocks (epoch packed) or documents."""
        if self.mode == "padded":
            return len(self.doc_starts) - 1
        if self.sampling == "random":
            return len(self.tokens) - self.block_size
        return (len(self.tokens) - 1) // self.block_size

    def cut(self) -> tuple[int, int]:
        """Padded mode: (documents longer than a row of block_size + 1 tokens, their tokens past it: never trained
        on); (0, 0) when packed."""
        if self.mode != "padded":
            return 0, 0
        row = self.block_size + 1 - (self.bos_id is not None)  # a document's tokens a row holds
        over = np.diff(self.doc_starts) - row  # (documents,)
        return int((over > 0).sum()), int(over.clip(min=0).sum())

    def batch(self, step: int, global_rows: int, part: int = 0, parts: int = 1) -> Batch:
        """Rows [part*n, (part+1)*n) of step `step`'s global batch of `global_rows`, n = global_rows/parts."""
        per_part = global_rows // parts
        units = self._units(step, global_rows)[part * per_part : (part + 1) * per_part]
        return self._padded(units) if self.mode == "padded" else self._packed(units * self._unit_stride())

    def _unit_stride(self) -> int:
        return 1 if self.sampling == "random" else self.block_size

    def _units(self, step: int, global_rows: int) -> np.ndarray:
        n = self.num_units
        if self.sampling == "random":
            return np.random.default_rng([self.seed, step]).integers(0, n, size=global_rows)
        first = step * global_rows
        k = np.arange(first, first + global_rows)
        return np.array([self._permutation(int(i // n))[i % n] for i in k], dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 2:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(self.num_units)
        return self._perm_cache[epoch]

    def _packed(self, offsets: np.ndarray) -> Batch:
        T = self.block_size
        rows = np.stack([np.asarray(self.tokens[o : o + T + 1], dtype=np.int64) for o in offsets])  # (B, T+1)
        rows_t = torch.from_numpy(rows)
        x, y = rows_t[:, :-1], rows_t[:, 1:]  # (B, T) each: teacher forcing, target = next token
        mask = document_mask(x, self.eos_id) if self.document_mask and self.eos_id is not None else None
        return Batch(x.contiguous(), y.contiguous(), mask)

    def _padded(self, doc_ids: np.ndarray) -> Batch:
        T = self.block_size
        rows = []
        for d in doc_ids:
            doc = np.asarray(self.tokens[self.doc_starts[d] : self.doc_starts[d + 1]], dtype=np.int64)
            head = [] if self.bos_id is None else [self.bos_id]
            rows.append(np.concatenate([np.asarray(head, dtype=np.int64), doc])[: T + 1])
        return pad_rows(rows, T if self.pad_to == "block" else None, self.pad_id)

    def eval_batches(self, batch_size: int, max_batches: int = 0, *, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Deterministic batches covering the split (evenly spaced subset when max_batches > 0), made one at a
        time; with world > 1, this rank's share, every rank the same number of forwards (a rank short of one
        runs a batch without targets: FSDP's and DDP's forwards are collective)."""
        units = self._eval_units(batch_size, max_batches)
        for start, counted in self._eval_starts(len(units), batch_size, rank, world):
            chunk = units[start : start + batch_size]
            batch = self._padded(chunk) if self.mode == "padded" else self._packed(chunk)
            yield batch if counted else without_targets(batch)

    def eval_batch_count(self, batch_size: int, max_batches: int = 0, *, rank: int = 0, world: int = 1) -> int:
        """How many batches eval_batches yields."""
        return len(self._eval_starts(len(self._eval_units(batch_size, max_batches)), batch_size, rank, world))

    def _eval_units(self, batch_size: int, max_batches: int) -> np.ndarray:
        if self.mode == "padded":
            units = np.arange(len(self.doc_starts) - 1)
        else:
            units = np.arange(0, len(self.tokens) - self.block_size, self.block_size)  # non-overlapping blocks
        if max_batches and len(units) > max_batches * batch_size:
            units = units[np.linspace(0, len(units) - 1, max_batches * batch_size).round().astype(np.int64)]
        return units

    @staticmethod
    def _eval_starts(n_units: int, batch_size: int, rank: int, world: int) -> list[tuple[int, bool]]:
        """This rank's (batch start, counted) pairs, round robin, padded to as many as the first rank has with
        uncounted batches (start 0, run for the collective forwards only)."""
        starts = range(0, n_units, batch_size)
        mine = [(start, True) for start in starts[rank::world]]
        return mine + [(0, False)] * (len(starts[0::world]) - len(mine))


def without_targets(batch: Batch) -> Batch:
    """The same inputs with every target ignored: a forward that adds nothing to a sum of losses."""
    return Batch(batch.x, torch.full_like(batch.y, IGNORE_INDEX), batch.attention_mask)


def pad_rows(rows: list[np.ndarray], length: int | None, pad_id: int) -> Batch:
    """Right-pad rows of ids (each at most T+1 long) into (x, y, mask); padded targets are ignored."""
    T = length if length is not None else max(len(r) for r in rows) - 1
    B = len(rows)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    y = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row) - 1
        if n <= 0:
            continue
        ids = torch.from_numpy(np.asarray(row, dtype=np.int64))
        x[i, :n] = ids[:-1]
        y[i, :n] = ids[1:]
        mask[i, :n] = 1
    return Batch(x, y, mask)


def document_mask(x: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T, T) bool: position q may attend to k only within the same document. An EOS opens the document that
    follows it, as a BOS would: its target is that document's first token, which must not see the one before."""
    doc = torch.cumsum((x == eos_id).long(), dim=1)  # (B, T) document index, counted from each EOS on
    return doc[:, :, None] == doc[:, None, :]  # (B, T, T)
