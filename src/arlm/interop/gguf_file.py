"""The GGUF container read directly: header, metadata, tensor table, and each tensor's bytes as a NumPy view of the
memory-mapped file (nothing is copied). The quantization types, their block sizes and their dequantization stay
gguf-py's (`gguf.GGMLQuantizationType`, `GGML_QUANT_SIZES`, `gguf.quants`); only the parsing is ours, because
`gguf.GGUFReader` builds a NumPy view for every piece of every value: about 2.3 s for SmolLM2's file, whose tokenizer
holds 98,000 strings, on every load. This reader takes ~0.1 s and gives the same values (tests/interop/test_gguf_file.py
compares the two on SmolLM2's file and on files gguf-py's writer made, of every value type and both byte orders).

Layout (GGUF v2 / v3, github.com/ggml-org/ggml docs/gguf.md): magic "GGUF", version u32, tensor count u64, metadata
count u64; each metadata pair a string key, a u32 value type and the value (a string is a u64 length and UTF-8 bytes,
an array a u32 item type, a u64 count and the items); each tensor a string name, u32 dimension count, u64 dimensions
(fastest first), u32 type, u64 offset into the data section, which starts at the next multiple of
`general.alignment` (32 by default) after the table. A file written big-endian reads its version as 2 or 3 only
byte-swapped; its numbers are then all big-endian."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arlm.errors import optional_package

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # struct codes
ARRAYS = {0: "u1", 1: "i1", 2: "u2", 3: "i2", 4: "u4", 5: "i4", 6: "f4", 7: "?", 10: "u8", 11: "i8", 12: "f8"}
TYPED_TENSORS = {"F16": "f2", "F32": "f4", "F64": "f8", "I8": "i1", "I16": "i2", "I32": "i4", "I64": "i8"}


@dataclass
class GGUFTensor:
    """One tensor of the table: its type, GGUF shape (ne0, the fastest dimension, first) and bytes in the file.
    `data` is typed (float32, float16, ...) for plain types and bytes (..., bytes per row) for block types, as
    `gguf.quants.dequantize` reads them."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    n_bytes: int
    data_offset: int
    data: np.ndarray


class _Cursor:
    """Reads values one after another from the file's bytes, in its byte order."""

    def __init__(self, buffer: np.ndarray, order: str) -> None:
        self.buffer, self.order, self.at = buffer, order, 0
        self.view = memoryview(buffer)

    def scalar(self, code: str) -> Any:
        """One number of struct format `code`."""
        (value,) = struct.unpack_from(self.order + code, self.view, self.at)
        self.at += struct.calcsize(code)
        return value

    def string(self) -> str:
        """A u64 length and that many UTF-8 bytes."""
        length = self.scalar("Q")
        end = self.at + length
        if end > len(self.buffer):
            raise ValueError(f"a string of {length} bytes runs past the end of the file")
        text = bytes(self.view[self.at : end]).decode("utf-8")
        self.at = end
        return text

    def value(self, kind: int) -> Any:
        """One metadata value of GGUF value type `kind` (arrays as lists, strings as str)."""
        if kind == STRING:
            return self.string()
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        if kind != ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self.scalar("I"), self.scalar("Q")
        if item in ARRAYS:  # numbers: one NumPy read of the whole run
            dtype = np.dtype(ARRAYS[item]).newbyteorder(self.order)
            end = self.at + count * dtype.itemsize
            if end > len(self.buffer):
                raise ValueError(f"an array of {count} items runs past the end of the file")
            values = np.frombuffer(self.buffer, dtype, count, self.at).tolist()
            self.at = end
            return values
        if item == STRING:
            return self.strings(count)
        return [self.value(item) for _ in range(count)]

    def strings(self, count: int) -> list[str]:
        """`count` strings one after another, as string() reads each, in one loop: a tokenizer's vocabulary and merges
        are ~100k of them (SmolLM2's took 0.19 s through string(), the most of reading the file)."""
        view, at, size, length_of = self.view, self.at, len(self.buffer), struct.Struct(self.order + "Q").unpack_from
        texts = []
        for _ in range(count):
            (length,) = length_of(view, at)
            at += 8
            if at + length > size:
                raise ValueError(f"a string of {length} bytes runs past the end of the file")
            texts.append(str(view[at : at + length], "utf-8"))
            at += length
        self.at = at
        return texts


def gguf_package(needed_for: str = "reading a GGUF file") -> Any:
    """The gguf package (GGUF's type tables and writer), or ArlmError saying which extra installs it."""
    return optional_package("gguf", needed_for, "gguf", name="the gguf package")


def read_gguf_file(path: Path) -> tuple[int, dict[str, Any], dict[str, GGUFTensor]]:
    """A GGUF file's version, metadata by key and tensors by name; ValueError (or struct.error) if it is not one,
    ArlmError without the gguf package."""
    gguf = gguf_package()

    buffer = np.memmap(path, mode="r")
    if bytes(buffer[:4]) != MAGIC:
        raise ValueError("GGUF magic invalid")
    order = "<"
    version = struct.unpack_from("<I", buffer, 4)[0]
    if version not in VERSIONS:
        order, version = ">", struct.unpack_from(">I", buffer, 4)[0]
        if version not in VERSIONS:
            raise ValueError(f"GGUF version {struct.unpack_from('<I', buffer, 4)[0]} is not supported (2 or 3)")
    cursor = _Cursor(buffer, order)
    cursor.at = 8
    tensor_count, metadata_count = cursor.scalar("Q"), cursor.scalar("Q")
    metadata: dict[str, Any] = {}
    for _ in range(metadata_count):
        key = cursor.string()
        if key in metadata:
            raise ValueError(f"duplicate metadata key {key}")
        metadata[key] = cursor.value(cursor.scalar("I"))
    table = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = tuple(cursor.scalar("Q") for _ in range(cursor.scalar("I")))
        table.append((name, dims, cursor.scalar("I"), cursor.scalar("Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment {alignment} is not a power of two")
    start = -(-cursor.at // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, dims, kind, offset in table:
        if name in tensors:
            raise ValueError(f"duplicate tensor {name}")
        tensors[name] = _tensor(buffer, order, name, dims, gguf.GGMLQuantizationType(kind), start + offset)
    return version, metadata, tensors


def _tensor(buffer: np.ndarray, order: str, name: str, dims: tuple[int, ...], kind: Any, at: int) -> GGUFTensor:
    """The table entry `name` and a view of its bytes (short where the file is cut: the caller checks n_bytes)."""
    gguf = gguf_package()

    block, size = gguf.GGML_QUANT_SIZES[kind]
    elements = int(np.prod(dims, dtype=np.int64))
    n_bytes = elements * size // block
    shape = tuple(reversed(dims))  # NumPy's row-major order: ne0 last
    raw = buffer[at : at + n_bytes]
    if kind.name in TYPED_TENSORS:
        dtype = np.dtype(TYPED_TENSORS[kind.name]).newbyteorder(order)
        data = raw[: len(raw) // dtype.itemsize * dtype.itemsize].view(dtype)  # whole items: all, unless cut
        data = data.reshape(shape) if data.size == elements else data
    else:
        data = raw.reshape(gguf.quants.quant_shape_to_byte_shape(shape, kind)) if len(raw) == n_bytes else raw
    return GGUFTensor(name, kind, dims, n_bytes, at, data)
