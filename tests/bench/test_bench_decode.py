import pytest
import torch

from arlm.bench.decode import run_decode_bench
from arlm.config import ModelConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.model.transformer import Transformer


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
    assert results["speculative"]["identical"] and results["speculative"]["acceptance"] == 1.0
    assert len(lines) == 5
