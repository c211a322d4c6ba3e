import numpy as np
import pytest

from arlm.data.shards import HEADER_SIZE, read_header, read_shard, write_shard
from arlm.errors import ArlmError


def test_uint16_when_vocab_fits_else_uint32(tmp_path):
    write_shard(tmp_path / "a.bin", [1, 2, 65535], vocab_size=65536)
    write_shard(tmp_path / "b.bin", [1, 2, 70000], vocab_size=70001)
    assert read_header(tmp_path / "a.bin")[0] == np.uint16
    assert read_header(tmp_path / "b.bin")[0] == np.uint32
    assert read_shard(tmp_path / "b.bin").tolist() == [1, 2, 70000]
    assert (tmp_path / "a.bin").stat().st_size == HEADER_SIZE + 3 * 2


def test_memmap_is_read_only_and_lazy(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(1000) % 500, vocab_size=500)
    tokens = read_shard(tmp_path / "a.bin")
    assert isinstance(tokens, np.memmap)
    assert tokens[998] == 498
    with pytest.raises(ValueError):
        tokens[0] = 1


def test_truncated_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / "a.bin"
    write_shard(path, list(range(100)), vocab_size=100)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArlmError, match="truncated or corrupt"):
        read_shard(path)
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 100)
    with pytest.raises(ArlmError, match="not an arlm token shard"):
        read_shard(other)
