"""llama.cpp beside arlm: llama-bench's output read, files and tools found or refused in one line (a stand-in
llama-bench script prints what the real one prints with -o jsonl)."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from arlm.bench.llamacpp import compare_with_llamacpp, find_llama_bench, gguf_for, llama_bench_rate
from arlm.config import ModelConfig
from arlm.errors import ArlmError
from arlm.model import native
from arlm.model.transformer import Transformer


def _fake_bench(folder, rate: float, code: int = 0):
    """A llama-bench stand-in under folder/build/bin that prints one jsonl row (or fails with `code`), its arguments
    written to folder/args."""
    row = {"model_filename": "x.gguf", "n_threads": 2, "n_gen": 8, "avg_ts": rate, "stddev_ts": 0.1}
    path = folder / "build" / "bin" / "llama-bench"
    path.parent.mkdir(parents=True)
    body = f"echo 'broken model' >&2; exit {code}" if code else f"echo '{json.dumps(row)}'"
    path.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'args'}\necho 'main: loading' >&2\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_the_rate_is_read_from_llama_bench_jsonl(tmp_path):
    binary = _fake_bench(tmp_path, 123.5)
    assert find_llama_bench(tmp_path) == binary
    assert llama_bench_rate(binary, tmp_path / "m.gguf", threads=2, new_tokens=8) == 123.5
    assert " -d " not in (tmp_path / "args").read_text()
    assert llama_bench_rate(binary, tmp_path / "m.gguf", threads=2, new_tokens=8, depth=1024) == 123.5
    assert " -d 1024" in (tmp_path / "args").read_text()  # decoding after 1,024 tokens of context
    assert " -p 0 -n 8 " in (tmp_path / "args").read_text()
    assert llama_bench_rate(binary, tmp_path / "m.gguf", threads=2, new_tokens=0, prompt_tokens=512) == 123.5
    assert " -p 512 -n 0 " in (tmp_path / "args").read_text()  # a prompt's processing


def test_a_failing_llama_bench_is_one_line(tmp_path):
    binary = _fake_bench(tmp_path, 1.0, code=3)
    with pytest.raises(ArlmError, match="exit 3.*broken model"):
        llama_bench_rate(binary, tmp_path / "m.gguf", threads=2, new_tokens=8)


def test_missing_files_say_how_to_make_them(tmp_path):
    assert find_llama_bench(tmp_path) is None
    with pytest.raises(ArlmError, match="benchmarks/llamacpp.sh"):
        gguf_for(tmp_path, "int8")
    with pytest.raises(ArlmError, match="no file for --dtype float16"):
        gguf_for(tmp_path, "float16")
    (tmp_path / "smollm2-Q4_1.gguf").write_bytes(b"")
    assert gguf_for(tmp_path, "int4") == tmp_path / "smollm2-Q4_1.gguf"


def test_the_comparison_is_the_quotient_of_medians(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, block_size=32, n_layer=1, n_head=2, d_model=16)).eval()
    result = compare_with_llamacpp(model, 1, _fake_bench(tmp_path, 50.0), tmp_path / "m.gguf", new_tokens=4, repeats=3)
    assert result["llama.cpp"] == 50.0
    assert result["arlm"] > 0
    assert result["ratio"] == pytest.approx(result["arlm"] / 50.0)
    low, high = result["ratio_range"]  # each round's arlm / llama.cpp: the llama.cpp side is 50 every round
    assert low <= result["ratio"] <= high and low > 0


def test_bench_decode_llamacpp_refuses_in_one_line_before_timing(tmp_path, monkeypatch, capsys):
    """Another model than SmolLM2 or a GGUF file, a missing file, no llama-bench, or no file at the precision: one
    line naming the fix, exit 2."""
    from arlm.cli import main

    monkeypatch.setenv("LLAMACPP_CACHE", str(tmp_path))
    cases = [
        (["--model", "random-smollm2"], "use --model smollm2 or a .gguf file"),
        (["--model", str(tmp_path / "absent.gguf")], "no GGUF file at"),
        (["--model", "smollm2"], "no llama-bench under"),
    ]
    for extra, match in cases:
        assert main(["bench", "decode", "--llamacpp", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err
    _fake_bench(tmp_path, 10.0)
    assert main(["bench", "decode", "--llamacpp", "--model", "smollm2", "--dtype", "int4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "smollm2-Q4_1.gguf is missing" in err and "benchmarks/llamacpp.sh" in err, err


def test_a_gguf_file_is_compared_with_llama_cpp_on_that_very_file(tmp_path, monkeypatch):
    """--model FILE.gguf: llama-bench runs that file beside every --dtype (auto's mixed for a Q4_K_M file, say)."""
    from arlm.commands.bench_decode import llamacpp_files

    monkeypatch.setenv("LLAMACPP_CACHE", str(tmp_path))
    binary = _fake_bench(tmp_path, 10.0)
    file = tmp_path / "model-Q4_K_M.gguf"
    file.write_bytes(b"GGUF")
    assert llamacpp_files(str(file), ["int8", "mixed"]) == (binary, {"int8": file, "mixed": file})


@pytest.mark.real_model
def test_bench_decode_auto_is_named_by_the_dtype_it_resolves_to(tmp_path, monkeypatch, capsys):
    """--dtype auto benches the dtype the file's layers hold (SmolLM2's Q4_1 file: int4), so llama.cpp's side is that
    precision's file."""
    from arlm.cli import main

    monkeypatch.setenv("LLAMACPP_CACHE", str(tmp_path))
    _fake_bench(tmp_path, 10.0)
    assert main(["bench", "decode", "--llamacpp", "--model", "smollm2", "--dtype", "auto"]) == 2
    file = "smollm2-Q4_1.gguf" if native.available() else "smollm2-F32.gguf"
    assert f"{file} is missing" in capsys.readouterr().err
