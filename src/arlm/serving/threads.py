"""Model work in threads that end, so that a server's process keeps one OpenMP pool of workers at a time.

libgomp gives every thread that starts a parallel region a pool of worker threads of its own, kept until that thread
ends. Once it manages more threads than the machine has CPUs, its workers stop spinning between regions (its
"throttled" spin count) and every region waits for them to wake: on 2 cores `arlm serve`'s batch thread stepped
SmolLM2 int4 in ~20 ms instead of ~4.7, because the main thread, which had loaded the model, kept a pool of its own
(docs/perf.md, "Serving"). So the main thread (uvicorn's event loop) runs no parallel kernels: the model is loaded
and the scheduler built in a thread that ends, and each request of the one-at-a-time lane runs in a thread that ends
with it; the batch thread's pool is then the only one between lane requests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_own_thread(fn: Callable[[], T], name: str) -> T:
    """fn() in a new thread, waited for: its result, or its exception raised here (the thread's OpenMP workers end
    with it). A daemon thread, so that Ctrl-C in the waiting thread ends the process."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("result", fn()))
        except BaseException as exc:  # handed to the waiting thread, raised there
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value
