import json
import os
import statistics
import subprocess

import pytest
import torch

from arlm.bench.gpu import dtype_variants, pick_variants
from tests.helpers import REPO, run_cli


@pytest.mark.slow
@pytest.mark.hf
def test_gpu_script_runs_in_cpu_smoke_mode(tmp_path):
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", __import__("sys").executable)}
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--cpu-smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["smoke"] is True
    train = results["train"]
    tokens = 2 * 2 * 64  # smoke: 2 steps x batch 2 x context 64, the same batches on both sides
    for side in ("arlm", "transformers"):
        assert train["rates"][side] == pytest.approx(tokens / statistics.median(train["times"][side]))
    assert train["ratio"] == pytest.approx(train["rates"]["arlm"] / train["rates"]["transformers"])
    for mode in ("compiled", "eager"):
        case = results["decode"][mode]["greedy, batch 1"]
        assert case["tokens"] == {"arlm": 16, "transformers": 16}  # counted from each side's output
        assert case["ratio"] == pytest.approx(case["arlm"] / case["transformers"])
    dtypes = results["dtypes"]  # compiled greedy per dtype, the same weights: float32 and int8 on the CPU
    for name in ("float32", "int8"):
        assert dtypes[name]["tokens_per_s"] > 0 and dtypes[name]["profile"]["wall_us_per_token"] > 0
    assert dtypes["ratio_int8"] == pytest.approx(dtypes["int8"]["tokens_per_s"] / dtypes["float32"]["tokens_per_s"])


def test_dtype_variants_add_one_graph_on_cuda_only():
    cpu = dtype_variants(torch.device("cpu"), ("float32", "int8"), untuned=True)
    assert cpu == {"float32": ("float32", None), "int8": ("int8", None)}  # one graph applies only on CUDA
    cuda = dtype_variants(torch.device("cuda"), ("bfloat16", "int8"), untuned=True)  # dicts only: no CUDA needed
    assert list(cuda) == [
        "bfloat16",
        "bfloat16, one graph",
        "int8",
        "int8, one graph",
        "bfloat16, untuned",
        "int8, untuned",
    ]
    assert cuda["int8, one graph"][1]["graph"] == "manual" and cuda["int8"][1] is None
    assert (
        "graph" not in cuda["int8, untuned"][1] and not cuda["int8, untuned"][1]["options"]["coordinate_descent_tuning"]
    )


@pytest.mark.slow
def test_unknown_variant_is_refused_before_anything_runs(tmp_path):
    """--variants names a variant the run has not (bfloat16 is a GPU variant; the CPU smoke mode compares float32):
    one line, exit 2, no results written."""
    result = run_cli("bench", "gpu", "--cpu-smoke", "--variants", "bfloat16", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--variants takes names of float32; int8; got bfloat16" in result.stderr
    assert not (tmp_path / "out").exists()


def test_variants_keep_only_those_named():
    variants = pick_variants(dtype_variants(torch.device("cuda"), ("bfloat16", "int8"), False), ("int8, one graph",))
    assert list(variants) == ["int8, one graph"]
