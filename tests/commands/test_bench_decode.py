from arlm.commands.bench_decode import summary_table


def _result(b1: float, b8: float, hf: float, ms1: float, ms5: float, llama: dict | None = None) -> dict:
    result = {
        "greedy, batch 1": {"arlm": b1, "transformers": hf, "ratio": b1 / hf, "arlm_decoding": 1.25 * b1},
        "greedy, batch 8": {"arlm": b8, "transformers": hf, "ratio": b8 / hf, "arlm_decoding": 1.5 * b8},
        "forward_ms": {1: ms1, 5: ms5},
    }
    return result if llama is None else {**result, "llama.cpp": llama}


def test_one_table_over_the_dtypes_with_llamacpp_where_it_ran():
    results = {
        "float32": _result(30.0, 120.0, 25.0, 20.0, 29.0, {"arlm": 31.0, "llama.cpp": 40.0, "ratio": 31.0 / 40.0}),
        "int4": _result(50.0, 150.0, 20.0, 10.0, 19.0),
    }
    lines = summary_table(results)
    assert len(lines) == 4 and all(line.count("|") == 11 for line in lines)
    assert lines[2] == "| float32 | 30.0 | 25.0 | 1.20x | 31.0 | 40.0 | 0.78x | 4.00x | 4.80x | 1.45x |"
    assert lines[3] == "| int4 | 50.0 | 20.0 | 2.50x | - | - | - | 3.00x | 3.60x | 1.90x |"


def test_without_llamacpp_the_table_has_no_llamacpp_columns():
    lines = summary_table({"bfloat16": _result(20.0, 160.0, 25.0, 40.0, 44.0)})
    assert "llama.cpp" not in lines[0] and lines[2] == "| bfloat16 | 20.0 | 25.0 | 0.80x | 8.00x | 9.60x | 1.10x |"


def test_a_strategy_without_a_decoding_alone_rate_shows_a_dash():
    result = _result(20.0, 160.0, 25.0, 40.0, 44.0)
    del result["greedy, batch 8"]["arlm_decoding"]
    assert summary_table({"float32": result})[2] == "| float32 | 20.0 | 25.0 | 0.80x | 8.00x | - | 1.10x |"
