import torch

from arlm.bench.memory import fit_exponent, largest_batch, saved_activation_bytes
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


def test_the_largest_batch_counts_each_rows_peak_not_only_what_autograd_saves():
    """naive attention at T = 8192 saved 2.39 GB and peaked at 4.36 GB a row on the CPU (docs/perf.md): no row fits
    4 GB, where dividing by the saved bytes said one did."""
    one = {"saved_bytes": int(2390.2 * 2**20), "step_bytes": int(4358.8 * 2**20)}
    assert largest_batch(one, 4.0, 7 * 2**20) == 0
    assert largest_batch(one, 40.0, 7 * 2**20) == 9
    assert largest_batch({"saved_bytes": 2**20, "step_bytes": 0}, 1.0, 0) == 1024  # no peak measured: the saved bytes
