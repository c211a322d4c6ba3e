"""serving/threads.py: a thread's OpenMP workers end with it, so that `arlm serve` keeps one pool, the batch
thread's: the model is loaded in a thread that ends, and each lane request runs in one."""

import os
import subprocess
import sys
import threading

import pytest

from arlm.cli import main
from arlm.errors import ArlmError
from arlm.model import native
from arlm.serving.threads import in_own_thread
from tests.serving.conftest import MODEL_ID, request, start_in_thread

PROBE = """
import os, time, torch
from arlm.model.quant import Int8Linear
from arlm.serving.threads import in_own_thread
torch.set_num_threads(2)
tasks = lambda: len(os.listdir("/proc/self/task"))
before = tasks()
layer = in_own_thread(lambda: Int8Linear.from_float(torch.nn.Linear(576, 1536)), "worker")
x = torch.randn(8, 576)  # (8, 576): the product runs parallel regions
in_own_thread(lambda: layer(x), "worker")
for _ in range(50):  # bounded: the ended thread's workers leave within a moment
    if tasks() == before:
        break
    time.sleep(0.1)
after_thread = tasks()
layer(x)
time.sleep(0.5)
print(before, after_thread, tasks())
"""


def test_in_own_thread_gives_the_result_or_raises_the_error():
    assert in_own_thread(lambda: threading.current_thread().name, "worker") == "worker"
    with pytest.raises(KeyError, match="gone"):
        in_own_thread(lambda: {}["gone"], "worker")


@pytest.mark.skipif(not native.available() or not os.path.isdir("/proc/self/task"), reason="arlm's kernels, Linux")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: no workers")
def test_a_threads_openmp_workers_end_with_it():
    """What the server relies on: workers made for a thread's parallel regions go when it ends; the main thread's
    stay (libgomp then manages more threads than CPUs and stops spinning: each region waits for a wake-up)."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    before, after_thread, after_main = map(int, done.stdout.split())
    assert after_thread == before and after_main > before, done.stdout


def test_serve_loads_the_model_off_the_main_thread(monkeypatch, tmp_path, capsys):
    seen = []

    def load_model(*args, **kwargs):
        seen.append(threading.current_thread() is threading.main_thread())
        raise ArlmError("stopped after the thread check")

    monkeypatch.setattr("arlm.interop.loading.load_model", load_model)
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert seen == [False]
    assert capsys.readouterr().err.strip() == "error: stopped after the thread check"


def test_each_lane_request_runs_in_a_thread_that_ends(tiny_lm, monkeypatch):
    import arlm.serving.scheduler as scheduler_module

    threads, real = [], scheduler_module.generate

    def generate(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "generate", generate)
    server, stop = start_in_thread(tiny_lm)
    try:
        body = {"model": MODEL_ID, "prompt": "The data", "max_tokens": 4, "strategy": "beam", "num_beams": 2}
        for _ in range(2):
            status, _ = request(server.base_url, "POST", "/v1/completions", body)
            assert status == 200
    finally:
        stop()
    assert len(threads) == 2 and threads[0] is not threads[1]
    assert all(t.name == "arlm-lane-job" and not t.is_alive() for t in threads)
