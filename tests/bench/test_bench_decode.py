import pytest
import torch

from arlm.bench.decode import run_decode_bench
from arlm.bench.forward import format_forward_times, forward_times
from arlm.config import ModelConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.model.quant import Int4Linear
from arlm.model.transformer import Transformer


@pytest.mark.slow
@pytest.mark.hf
def test_decode_bench_runs_every_case_on_both_sides():
    torch.manual_seed(0)
    tokenizer = VocabTokenizer.train("char", ["abcdefgh"], 0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=1, n_head=2, d_model=16)
    ).eval()
    lines = []
    results = run_decode_bench(model, tokenizer, new_tokens=4, prompt_len=12, repeats=1, draft=model, log=lines.append)
    assert {"greedy, batch 1", "greedy, batch 8", "beam search, 4 beams", "sampling top-k 50"} <= set(results)
    expected_tokens = {
        "greedy, batch 1": 4,
        "greedy, batch 8": 8 * 4,
        "beam search, 4 beams": 2,
        "sampling top-k 50": 4,
    }
    for name, tokens in expected_tokens.items():  # both sides generated the same tokens, counted from their outputs
        assert results[name]["tokens"] == {"arlm": tokens, "transformers": tokens}
        assert results[name]["ratio"] == pytest.approx(results[name]["arlm"] / results[name]["transformers"])
    for name in ("greedy, batch 1", "greedy, batch 8"):  # decoding alone leaves out the prompts' forward
        assert results[name]["arlm_decoding"] > results[name]["arlm"]
    assert results["speculative"]["identical"] and results["speculative"]["acceptance"] == 1.0
    assert len(lines) == 6


@pytest.mark.hf
def test_decode_bench_alternates_every_case(monkeypatch):
    """The cases' timed runs interleave (round robin, reversed every repeat): batch 8 over batch 1 compares runs
    made in the same stretch of the machine's speed, not one case's repeats after another's."""
    import arlm.bench.decode as bench

    torch.manual_seed(0)
    tokenizer = VocabTokenizer.train("char", ["abcdefgh"], 0)
    model = Transformer(ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=1, n_head=2, d_model=16))
    calls, real = [], bench.generate

    def recording(engine, prompts, config, **kwargs):
        calls.append((config.strategy, len(prompts)))
        return real(engine, prompts, config, **kwargs)

    monkeypatch.setattr(bench, "generate", recording)
    bench.run_decode_bench(model.eval(), tokenizer, new_tokens=2, prompt_len=10, repeats=3, log=lambda _: None)
    order = [("greedy", 1), ("greedy", 8), ("beam", 1), ("sample", 1)]
    assert calls == order + order + order[::-1] + order  # warm-ups, then repeats 1, 2 (reversed), 3


@pytest.mark.hf
def test_decode_bench_at_a_quantized_dtype_and_forward_times():
    torch.manual_seed(0)
    tokenizer = VocabTokenizer.train("char", ["abcdefgh"], 0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=1, n_head=2, d_model=64)
    ).eval()
    results = run_decode_bench(
        model, tokenizer, new_tokens=4, prompt_len=12, repeats=1, log=lambda _: None, cases=["greedy, batch 1"],
        dtype="int4",
    )  # fmt: skip
    assert results["greedy, batch 1"]["tokens"] == {"arlm": 4, "transformers": 4}
    assert isinstance(model.blocks[0].mlp.down, Int4Linear)  # converted in place: the model the figures are for
    times = forward_times(model, prompt_len=8, max_tokens=8, repeats=1)
    assert list(times) == list(range(1, 9)) and all(ms > 0 for ms in times.values())
    line = format_forward_times("int4", times)
    assert line.startswith("  forward ms by new tokens (int4): 1: ") and "5 vs 1 token" in line
