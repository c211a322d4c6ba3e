"""arlm's GGUF container reader against gguf-py's GGUFReader (the reference): the same metadata values and the same
tensor table and bytes, on files gguf-py's writer made (every value type, both byte orders) and on SmolLM2's file."""

from __future__ import annotations

import numpy as np
import pytest

from arlm.interop.gguf_file import read_gguf_file
from tests.helpers import optional_module

gguf = optional_module("gguf")
Q = gguf.GGMLQuantizationType


def _reference(path):
    """GGUFReader's view of the file: metadata (without its GGUF.* header pseudo-fields) and tensors by name."""
    reader = gguf.GGUFReader(path)
    metadata = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    return metadata, {t.name: t for t in reader.tensors}


def _assert_same(path) -> None:
    """Our reader gives GGUFReader's metadata, tensor types, shapes, offsets and bytes."""
    _, metadata, tensors = read_gguf_file(path)
    ref_metadata, ref_tensors = _reference(path)
    assert metadata == ref_metadata
    for key, value in ref_metadata.items():  # the same Python types too (1 is not 1.0 is not True)
        assert type(metadata[key]) is type(value), key
    assert list(tensors) == list(ref_tensors)
    for name, ref in ref_tensors.items():
        ours = tensors[name]
        assert ours.tensor_type == ref.tensor_type
        assert ours.shape == tuple(int(d) for d in ref.shape)
        assert (ours.n_bytes, ours.data_offset) == (int(ref.n_bytes), int(ref.data_offset))
        assert ours.data.dtype == ref.data.dtype and ours.data.shape == ref.data.shape
        assert np.array_equal(ours.data, ref.data, equal_nan=True)


def _every_kind(path, endianess) -> None:
    """A file with metadata of every value type and tensors of plain and block types."""
    writer = gguf.GGUFWriter(path, "llama", endianess=endianess)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 1e-5)
    writer.add_uint64("t.u64", 2**63 + 5)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo, wörld ✓")
    writer.add_string("t.empty", "")
    writer.add_array("t.ints", [3, -1, 4, 1, -5])
    writer.add_array("t.floats", [0.5, -2.25, 1e-3])
    writer.add_array("t.strs", ["a", "", "ünïcode", "x" * 300])
    writer.add_array("t.bools", [True, False, True])
    writer.add_array("t.none", [])
    rng = np.random.default_rng(0)
    writer.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((2, 4, 8)).astype(np.float16))
    writer.add_tensor("i32", rng.integers(-9, 9, (7,), dtype=np.int32))
    if endianess == gguf.GGUFEndian.LITTLE:  # block types are bytes: gguf-py writes them in its own order only
        values = rng.standard_normal((4, 64)).astype(np.float32)
        writer.add_tensor("q8", gguf.quants.quantize(values, Q.Q8_0), raw_dtype=Q.Q8_0)
        writer.add_tensor("q4", gguf.quants.quantize(values, Q.Q4_1), raw_dtype=Q.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("endianess", ["LITTLE", "BIG"])
def test_every_value_type_reads_as_gguf_py_reads_it(tmp_path, endianess):
    path = tmp_path / "kinds.gguf"
    _every_kind(path, gguf.GGUFEndian[endianess])
    _assert_same(path)
    _, metadata, tensors = read_gguf_file(path)
    assert metadata["t.strs"][2] == "ünïcode" and metadata["t.u64"] == 2**63 + 5 and metadata["t.bool"] is True
    assert tensors["f16"].data.shape == (2, 4, 8) and tensors["f32"].shape == (5, 3)


def test_a_custom_alignment_moves_the_data_as_gguf_py_places_it(tmp_path):
    path = tmp_path / "aligned.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    writer.add_tensor("a", np.arange(5, dtype=np.float32))
    writer.add_tensor("b", np.arange(7, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _assert_same(path)
    _, _, tensors = read_gguf_file(path)
    assert all(t.data_offset % 64 == 0 for t in tensors.values())


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_file_reads_as_gguf_py_reads_it():
    from arlm.interop.gguf import smollm2_path

    _assert_same(smollm2_path())


@pytest.mark.parametrize("damage", ["magic", "version"])
def test_a_damaged_header_is_a_value_error(tmp_path, damage):
    path = tmp_path / "kinds.gguf"
    _every_kind(path, gguf.GGUFEndian.LITTLE)
    data = bytearray(path.read_bytes())
    data[0 if damage == "magic" else 4] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="magic" if damage == "magic" else "version"):
        read_gguf_file(path)


def test_read_gguf_parses_a_file_once_while_it_is_unchanged(tmp_path):
    import os

    from arlm.interop.gguf import read_gguf

    path = tmp_path / "kinds.gguf"
    _every_kind(path, gguf.GGUFEndian.LITTLE)
    first = read_gguf(path)
    assert read_gguf(str(path)) is first  # the same parse
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))  # the file changed (as far as its stat says)
    again = read_gguf(path)
    assert again is not first and again.metadata == first.metadata
