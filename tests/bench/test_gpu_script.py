import json
import os
import subprocess

import pytest

from tests.helpers import REPO


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
    assert results["train"]["ratio"] > 0 and set(results["train"]["rates"]) == {"arlm", "transformers"}
    for mode in ("compiled", "eager"):
        assert results["decode"][mode]["greedy, batch 1"]["arlm"] > 0
