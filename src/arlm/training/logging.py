"""Run logging: metrics.jsonl first (one JSON object a line), then console, progress bar and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

from arlm.errors import ArlmError, optional_package

T = TypeVar("T")


def summary_writer() -> type:
    """TensorBoard's SummaryWriter, or ArlmError naming the extra (asked for before a run writes anything)."""
    tensorboard = optional_package(
        "torch.utils.tensorboard", "train.tensorboard", "tensorboard", name="the tensorboard package"
    )
    return tensorboard.SummaryWriter


class MetricsLog:
    """Appends records to metrics.jsonl; mirrors scalars to TensorBoard when enabled."""

    def __init__(self, path: str | Path, *, tensorboard_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard_dir is not None:
            self._tb = summary_writer()(str(tensorboard_dir))

    def offset(self) -> int:
        """Byte length of the log so far (stored in checkpoints, so resume can cut what came after)."""
        self._file.flush()
        return self.path.stat().st_size

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (and its numeric fields to TensorBoard, indexed by step)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        """Flush and close."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_log(path: str | Path, offset: int) -> None:
    """Cut metrics.jsonl back to `offset` bytes (what a checkpoint had seen), dropping later records."""
    path = Path(path)
    if path.exists() and path.stat().st_size > offset:
        with open(path, "r+b") as f:
            f.truncate(offset)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a line that is not JSON raises ArlmError naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ArlmError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
    return records


class Progress:
    """A tqdm progress bar on a terminal; silent otherwise (callers print periodic lines instead)."""

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        leave: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = is_terminal(self.stream) if enabled is None else enabled
        self.done = 0
        self._bar = tqdm(total=max(total, 1), desc=desc, file=self.stream, disable=not self.enabled, leave=leave)

    def update(self, done: int, info: str = "") -> None:
        """Redraw with `done` of `total` complete."""
        self._bar.update(done - self.done)
        self.done = done
        if info and self.enabled:
            self._bar.set_postfix_str(info)

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield the items, advancing the bar by one after each."""
        for item in items:
            yield item
            self.update(self.done + 1)

    def clear(self) -> None:
        """Erase the bar so a normal line can be printed."""
        self._bar.clear()

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()


def is_terminal(stream: TextIO) -> bool:
    """True when the stream is an interactive terminal (and NO_COLOR/CI do not say otherwise)."""
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"
