"""Token shards on disk: a 64-byte header (magic, version, dtype, count, vocab) then raw ids, read by memmap."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from arlm.errors import ArlmError
from arlm.temporaries import temporary_for

MAGIC = b"ARLMTOK\x00"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per id, count, vocab size
_DTYPES = {2: np.uint16, 4: np.uint32}


def dtype_for(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits, else uint32."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class ShardWriter:
    """Append token ids to a shard file; the header is written on close and the file renamed into place."""

    def __init__(self, path: str | Path, vocab_size: int) -> None:
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.dtype = dtype_for(vocab_size)
        self.count = 0
        self._tmp = temporary_for(self.path)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(b"\x00" * HEADER_SIZE)

    def append(self, ids: list[int] | np.ndarray) -> None:
        """Append ids to the shard."""
        array = np.asarray(ids, dtype=self.dtype)
        self._file.write(array.tobytes())
        self.count += array.size

    def close(self) -> None:
        """Write the header, flush, and rename the shard into place atomically."""
        header = _HEADER.pack(MAGIC, VERSION, np.dtype(self.dtype).itemsize, self.count, self.vocab_size)
        self._file.seek(0)
        self._file.write(header.ljust(HEADER_SIZE, b"\x00"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


def write_shard(path: str | Path, ids: np.ndarray | list[int], vocab_size: int) -> None:
    """Write a whole shard in one call."""
    with ShardWriter(path, vocab_size) as writer:
        writer.append(ids)


def read_header(path: str | Path) -> tuple[np.dtype, int, int]:
    """(dtype, count, vocab_size) of a shard, after checking the magic, version and file size."""
    path = Path(path)
    if not path.exists():
        raise ArlmError(f"token shard {path} does not exist; run arlm prepare first")
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise ArlmError(f"{path} is truncated (no complete header); run arlm prepare again")
    magic, version, itemsize, count, vocab_size = _HEADER.unpack(raw[: _HEADER.size])
    if magic != MAGIC:
        raise ArlmError(f"{path} is not an arlm token shard (bad magic)")
    if version != VERSION or itemsize not in _DTYPES:
        raise ArlmError(f"{path} has shard version {version}/{itemsize}-byte ids; this arlm reads version {VERSION}")
    expected = HEADER_SIZE + count * itemsize
    if path.stat().st_size != expected:
        raise ArlmError(f"{path} is truncated or corrupt ({path.stat().st_size} bytes, header says {expected})")
    return np.dtype(_DTYPES[itemsize]), count, vocab_size


def read_shard(path: str | Path) -> np.ndarray:
    """The ids of a shard as a read-only memory map (a corpus larger than memory is fine)."""
    dtype, count, _ = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,))
