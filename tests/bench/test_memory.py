import pytest
import torch

from arlm.bench.memory import bench_memory_command, fit_exponent, saved_activation_bytes
from arlm.config import ModelConfig
from arlm.model.transformer import Transformer


def test_fit_exponent_recovers_powers():
    lengths = [128, 256, 512, 1024, 2048]
    assert abs(fit_exponent(lengths, [t**2 + 5 * t for t in lengths]) - 2) < 0.05
    assert abs(fit_exponent(lengths, [3 * t for t in lengths]) - 1) < 1e-9


def test_naive_attention_saves_quadratic_memory_and_sdpa_linear():
    def saved(backend, length):
        config = ModelConfig(
            flavour="llama", n_layer=1, n_head=2, d_model=16, vocab_size=32, block_size=length, attention=backend
        )
        return saved_activation_bytes(Transformer(config), torch.randint(0, 32, (1, length + 1)))

    lengths = [256, 512, 1024, 2048]
    naive = [saved("naive", t) for t in lengths]
    sdpa = [saved("sdpa", t) for t in lengths]
    assert fit_exponent(lengths, naive) > 1.7
    assert 0.9 < fit_exponent(lengths, sdpa) < 1.1
    assert naive[-1] > 5 * sdpa[-1]


def test_the_command_measures_both_backends_in_subprocesses(tmp_path):
    lines = []
    result = bench_memory_command(lengths=(64, 128, 256), out=str(tmp_path / "mem.png"), device="cpu", log=lines.append)
    assert set(result["exponents"]) == {"naive", "sdpa", "naive - sdpa"}
    assert result["exponents"]["naive - sdpa"] == pytest.approx(2.0, abs=0.1)  # the (T, T) scores alone
    assert all(r["saved_bytes"] > 0 and r["max_batch"] > 0 for rows in result["rows"].values() for r in rows)
    assert (tmp_path / "mem.png").exists() and (tmp_path / "mem-speed.png").exists()
