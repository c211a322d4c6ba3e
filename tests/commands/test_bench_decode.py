import pytest
import torch

from arlm.commands.bench_decode import bench_draft, summary_table
from arlm.config import ModelConfig
from arlm.data.tokenizers import VocabTokenizer
from arlm.decoding.drafts import shares_weights
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer


def _result(b1: float, b8: float, hf: float, ms1: float, ms5: float, llama: dict | None = None) -> dict:
    result = {
        "greedy, batch 1": {"arlm": b1, "transformers": hf, "ratio": b1 / hf, "arlm_decoding": 1.25 * b1},
        "greedy, batch 8": {"arlm": b8, "transformers": hf, "ratio": b8 / hf, "arlm_decoding": 1.5 * b8},
        "forward_ms": {1: ms1, 5: ms5},
    }
    return result if llama is None else {**result, "llama.cpp": llama}


def test_one_table_over_the_dtypes_with_llamacpp_where_it_ran():
    rounds = {"arlm": 44, "llama.cpp": 40, "ratio": 1.1, "ratio_range": (0.9, 1.25), "file": "smollm2-Q8_0.gguf"}
    results = {
        "float32": _result(30.0, 120.0, 25.0, 20.0, 29.0, {"arlm": 31.0, "llama.cpp": 40.0, "ratio": 31.0 / 40.0}),
        "int4": _result(50.0, 150.0, 20.0, 10.0, 19.0),
        "int8": _result(40.0, 160.0, 20.0, 10.0, 12.0, rounds),
    }
    lines = summary_table(results)
    assert len(lines) == 5 and all(line.count("|") == 11 for line in lines)
    assert lines[2] == "| float32 | 30.0 | 25.0 | 1.20x | 31.0 | 40.0 | 0.78x | 4.00x | 4.80x | 1.45x |"
    row = "| int8 | 40.0 | 20.0 | 2.00x | 44.0 | 40.0 (smollm2-Q8_0.gguf) | 1.10x (0.90-1.25) | 4.00x | 4.80x | 1.20x |"
    assert lines[4] == row  # the rounds' own ratios, and llama.cpp's file
    assert lines[3] == "| int4 | 50.0 | 20.0 | 2.50x | - | - | - | 3.00x | 3.60x | 1.90x |"


def test_without_llamacpp_the_table_has_no_llamacpp_columns():
    lines = summary_table({"bfloat16": _result(20.0, 160.0, 25.0, 40.0, 44.0)})
    assert "llama.cpp" not in lines[0] and lines[2] == "| bfloat16 | 20.0 | 25.0 | 0.80x | 8.00x | 9.60x | 1.10x |"


def test_a_strategy_without_a_decoding_alone_rate_shows_a_dash():
    result = _result(20.0, 160.0, 25.0, 40.0, 44.0)
    del result["greedy, batch 8"]["arlm_decoding"]
    assert summary_table({"float32": result})[2] == "| float32 | 20.0 | 25.0 | 0.80x | 8.00x | - | 1.10x |"


def test_the_benchmarks_draft_takes_the_self_forms():
    """--draft self:L makes the target's first L layers from the target as the benchmark lays it out; self:DTYPE is
    the target's own weights at DTYPE; a malformed self: reference ends in one clear error."""
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=32, n_layer=3, n_head=2, d_model=64)
    target = Transformer(config).eval()
    tok = VocabTokenizer.train("char", ["abc"], 0)
    make = bench_draft("self:2", "random-smollm2", target, tok, "float32")
    draft = make(target)
    assert callable(make) and shares_weights(draft, target) and draft.config.n_layer == 2
    int4 = bench_draft("self:int4", "random-smollm2", target, tok, "float32")
    assert int4.config == target.config and int4 is not target
    assert "Int4Linear" in {type(m).__name__ for m in int4.modules()}
    with pytest.raises(ArlmError, match="self:DTYPE with DTYPE one of"):
        bench_draft("self:int3", "random-smollm2", target, tok, "float32")
    with pytest.raises(ArlmError, match=r"--draft self:float32 would draft with the target itself"):
        bench_draft("self:float32", "random-smollm2", target, tok, "float32")  # (read 1.32x, 100% accepted)


@pytest.mark.parametrize("flags", [["--repeats", "0"], ["--new-tokens", "0"], ["--new-tokens", "-3"]])
def test_counts_below_one_are_one_line_before_anything_is_printed(flags, capsys):
    from arlm.cli import main

    assert main(["bench", "decode", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --new-tokens and --repeats must be >= 1") and err.count("\n") == 1


def test_without_transformers_bench_decode_is_one_line_before_any_work(monkeypatch, capsys):
    """It built a 135M model and printed a header and half a table before the line naming the extra."""
    import sys

    from arlm.cli import main

    monkeypatch.setitem(sys.modules, "transformers", None)  # (import transformers raises ImportError)
    assert main(["bench", "decode", "--new-tokens", "2", "--repeats", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: arlm bench decode needs transformers: pip install 'arlm[hf]'\n"
