import pytest

from arlm.commands.bench_memory import bench_memory_command


def test_the_command_measures_both_backends_in_subprocesses(tmp_path):
    lines = []
    result = bench_memory_command(lengths=(64, 128, 256), out=str(tmp_path / "mem.png"), device="cpu", log=lines.append)
    assert set(result["exponents"]) == {"naive", "sdpa", "naive - sdpa"}
    assert result["exponents"]["naive - sdpa"] == pytest.approx(2.0, abs=0.1)  # the (T, T) scores alone
    assert all(r["saved_bytes"] > 0 and r["max_batch"] > 0 for rows in result["rows"].values() for r in rows)
    assert (tmp_path / "mem.png").exists() and (tmp_path / "mem-speed.png").exists()
