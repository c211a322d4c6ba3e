"""A tiny model with a BPE tokenizer and a chat template, saved as a checkpoint, and a server on a free localhost
port: uvicorn in a thread of the test process (so that tests can look at the scheduler), or `arlm serve` in a
subprocess."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from arlm.config import ModelConfig, RunConfig
from arlm.data.tokenizers import train_tokenizer
from arlm.interop.checkpoint import export_weights, save_checkpoint
from arlm.model.inference import optimize_for_decoding
from arlm.model.transformer import Transformer
from tests.helpers import tiny_text

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MODEL_ID = "tiny"
SERVING_PACKAGES = ("fastapi", "uvicorn", "prometheus_client", "openai")

# Without the serve extra these tests are skipped, except in CI, where `make test` installs it: there a missing
# package must fail, not hide (as tests/conftest.py does for the hf and real_model tests).
if os.environ.get("CI", "").lower() not in ("1", "true"):
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in SERVING_PACKAGES):
        collect_ignore_glob = ["test_*.py"]


@dataclass
class TinyLM:
    model: Transformer  # decode layout (optimize_for_decoding, batch-invariant), as arlm serve uses it
    tokenizer: object
    checkpoint: Path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> TinyLM:
    tok = train_tokenizer("bpe", tiny_text(12), 320)
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = ModelConfig(
        flavour="llama", vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=4, d_model=32, init_std=0.2
    )
    model = Transformer(config).eval()
    path = tmp_path_factory.mktemp("serving") / "tiny-checkpoint"
    run_config = RunConfig(model=config)
    save_checkpoint(path, weights=export_weights(model.state_dict(), config), tokenizer=tok, config=run_config, meta={})
    return TinyLM(optimize_for_decoding(model, batch_invariant=True), tok, path)


def draft_model(lm: TinyLM) -> Transformer:
    """A draft for speculative decoding: the tiny model with noise on its weights, so that it agrees with it
    often but not always (some drafts accepted, some rejected)."""
    import copy

    draft = copy.deepcopy(lm.model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1 * p.std())
    return draft


@dataclass
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT
    scheduler: object
    lm: TinyLM

    def client(self, api_key: str = "none", **kwargs):
        """The official openai client pointed at this server."""
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0, **kwargs)


def start_in_thread(
    lm: TinyLM,
    api_key: str | None = None,
    origins: list[str] | None = None,
    dtype: str | None = None,
    max_body: int = 16 * 2**20,
    **scheduler_kwargs,
):
    """uvicorn serving the tiny model in a thread (api_key: the key it asks; origins: CORS; dtype: what /health says
    it was loaded at; max_body: its request body limit in bytes); returns (LiveServer, stop function)."""
    import uvicorn

    from arlm.serving.app import create_app
    from arlm.serving.scheduler import Scheduler

    settings = {"max_batch": 4, "max_queue": 16, "max_len": 256, **scheduler_kwargs}
    scheduler = Scheduler(lm.model, lm.tokenizer, **settings)
    app = create_app(scheduler, MODEL_ID, api_key=api_key, origins=origins, dtype=dtype, max_body=max_body)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):  # bounded: up to a minute on a busy machine
        if server.started:
            break
        time.sleep(0.1)
    assert server.started, "the server did not start"

    def stop() -> None:
        server.should_exit = True
        thread.join(60)
        sock.close()

    return LiveServer(f"http://127.0.0.1:{port}", scheduler, lm), stop


@pytest.fixture(scope="module")
def live(tiny_lm):
    server, stop = start_in_thread(tiny_lm)
    yield server
    stop()


def request(base_url: str, method: str, path: str, body=None, timeout: float = 120) -> tuple[int, object]:
    """One plain HTTP request (stdlib); body a dict (sent as JSON) or raw bytes; returns (status, parsed JSON or
    text)."""
    import http.client
    import json
    from urllib.parse import urlparse

    url = urlparse(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data is not None else {})
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(raw)
    except json.JSONDecodeError:
        return response.status, raw


def start_subprocess(args: list[str]) -> tuple[subprocess.Popen, str]:
    """`python -m arlm serve ARGS --port 0`, waited for until it prints where it serves and /health answers there:
    the process and its base URL (its port bound by the server itself, so no other process can take it between a
    free-port probe and the server's start)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "arlm", "serve", *args, "--port", "0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    for _ in range(1200):  # bounded: up to two minutes on a busy machine
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()  # the whole line: printed and flushed at once ("" once it exited)
            break
    found = re.search(r" on (http://127\.0\.0\.1:[1-9][0-9]*) ", line)
    for _ in range(1200 if found else 0):  # bounded, as above
        if proc.poll() is not None:
            break
        try:
            if request(found.group(1), "GET", "/health", timeout=5)[0] == 200:
                return proc, found.group(1)
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"arlm serve did not come up: {line!r} {proc.communicate(timeout=30)[1]}")


class SSEStream:
    """A streamed request read event by event (stdlib), which can be dropped mid-stream like a client that goes
    away."""

    def __init__(self, base_url: str, path: str, body: dict, timeout: float = 120) -> None:
        import http.client
        import json
        from urllib.parse import urlparse

        url = urlparse(base_url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()

    def next(self):
        """The next event's data (a dict, or "[DONE]"); None at the end of the stream."""
        import json

        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.decode().strip()
            if line.startswith("data: "):
                data = line[len("data: ") :]
                return data if data == "[DONE]" else json.loads(data)

    def all(self) -> list:
        """Every remaining event up to [DONE]."""
        events = []
        while (event := self.next()) not in (None, "[DONE]"):
            events.append(event)
        return events

    def close(self) -> None:
        """Drop the connection."""
        self.response.close()
        self.conn.close()


def wait_until(condition, what: str, tries: int = 600) -> None:
    """Poll a condition (bounded: tries x 0.1 s), failing with `what` if it never holds."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
