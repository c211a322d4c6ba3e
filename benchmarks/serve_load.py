"""Load test of `arlm serve` on localhost: N concurrent clients x M streamed requests each, for N in 1, 4, 8, 16.

    .venv/bin/python benchmarks/serve_load.py [--model smollm2] [--requests 4] [--max-tokens 64] [--dtype auto]
        [--no-reuse-prefix] [--json]
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --name smollm2   # a running server
    .venv/bin/python benchmarks/serve_load.py --levels 8 --vs http://127.0.0.1:8080 --rounds 3  # side by side

Starts `arlm serve MODEL` (unless --url is given), waits for /health, then for each number of clients runs every
client's requests one after another: greedy, streamed chat completions of at most --max-tokens tokens (a reply may
end earlier at EOS; tokens are counted as the server reports them). Reports per level: requests, tokens, wall time,
aggregate tokens/s, time to first token p50/p95, inter-token latency p50/p95 (gaps between streamed chunks), and the
aggregate tokens/s relative to one client. --json asks every request for a JSON object (OpenAI's
response_format json_object, which llama-server also takes). Bounded: clients x requests requests per level,
nothing else. Prints a markdown table for docs/perf.md.

With --vs URL (another OpenAI-compatible server already running, e.g. llama.cpp's `llama-server --parallel 8`
on the same GGUF and threads) each level runs --rounds times on each server, alternating, and the table gives the
medians and the ratio arlm / other. Only one server works at a time; both stay loaded."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

from arlm.bench.machine import cpu_model

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a hash table works, step by step.",
    "List ten facts about the planet Mars.",
    "Describe the water cycle to a ten-year-old.",
    "What are the main differences between Python lists and tuples?",
    "Write a poem about autumn leaves.",
    "Summarize the plot of a heist movie you invent.",
    "Give a recipe for a simple tomato soup.",
]
LEVELS = (1, 4, 8, 16)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def one_request(url: str, name: str, prompt: str, max_tokens: int, extra: dict | None = None) -> dict:
    """One streamed chat completion (extra: more of the body); times of the first chunk and of every chunk after
    it."""
    parts = urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = {
        "model": name,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},  # OpenAI's way to ask for usage in the last chunk
        **(extra or {}),
    }
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    times, tokens = [], 0
    while line := response.readline():
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
    conn.close()
    end = time.perf_counter()
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"ttft": (times[0] - start) if times else end - start, "gaps": gaps, "tokens": tokens, "end": end}


def run_level(url: str, name: str, clients: int, requests: int, max_tokens: int, extra: dict | None = None) -> dict:
    """`clients` threads, each sending `requests` requests in turn."""
    results, errors, lock = [], [], threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            try:
                out = one_request(url, name, PROMPTS[(c * requests + r) % len(PROMPTS)], max_tokens, extra)
            except Exception as exc:  # reported, not hidden
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    gaps = [g for r in results for g in r["gaps"]]
    ttfts = [r["ttft"] for r in results]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "tokens": tokens,
        "request_tokens": [r["tokens"] for r in results],
        "wall": wall,
        "tok_s": tokens / wall,
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p95": percentile(ttfts, 0.95),
        "itl_p50": percentile(gaps, 0.5),
        "itl_p95": percentile(gaps, 0.95),
    }


def compare(url: str, name: str, other: str, other_name: str, args: argparse.Namespace) -> None:
    """Each level --rounds times on each server, alternating (the order reversed every round); medians and the ratio
    of aggregate tokens/s."""
    print("\n| clients | arlm tokens/s | other tokens/s | arlm / other | arlm TTFT p50 s | other TTFT p50 s | errors |")
    print("|---|---|---|---|---|---|---|")
    for clients in (int(c) for c in args.levels.split(",")):
        ours, theirs = [], []
        sides = [(url, name, ours), (other, other_name, theirs)]
        for r in range(args.rounds):
            for where, model, rows in sides if r % 2 == 0 else sides[::-1]:
                rows.append(run_level(where, model, clients, args.requests, args.max_tokens, body_extra(args)))
        a, b = (statistics.median(r["tok_s"] for r in rows) for rows in (ours, theirs))
        ta, tb = (statistics.median(r["ttft_p50"] for r in rows) for rows in (ours, theirs))
        errors = sum(r["errors"] for r in ours + theirs)
        print(f"| {clients} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {ta:.2f} | {tb:.2f} | {errors} |", flush=True)


def body_extra(args: argparse.Namespace) -> dict:
    """What --json adds to every request: OpenAI's response_format for any JSON object."""
    return {"response_format": {"type": "json_object"}} if args.json else {}


def start_server(args: argparse.Namespace) -> subprocess.Popen:
    """`arlm serve` in a subprocess, waited for until /health answers."""
    cmd = [
        sys.executable,
        "-m",
        "arlm",
        "serve",
        args.model,
        "--port",
        str(args.port),
        "--dtype",
        args.dtype,
        "--max-batch",
        str(args.max_batch),
        "--log-level",
        "warning",
        *([] if args.reuse_prefix else ["--no-reuse-prefix"]),
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit("arlm serve exited before it answered")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
            conn.request("GET", "/health")
            answer = conn.getresponse()
            if answer.status == 200:
                args.dtype = json.loads(answer.read()).get("dtype") or args.dtype  # what auto chose, for the tables
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("arlm serve did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="auto")  # arlm serve's own default
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--url", help="use this running server instead of starting one")
    reuse_help = "arlm serve's --reuse-prefix (default: on, as the server's)"
    parser.add_argument("--reuse-prefix", action=argparse.BooleanOptionalAction, default=True, help=reuse_help)
    parser.add_argument("--json", action="store_true", help="every request asks response_format json_object")
    parser.add_argument("--name", help="model name the running server serves (default --model)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="numbers of clients")
    parser.add_argument("--vs", help="another running OpenAI-compatible server to compare with, alternating")
    parser.add_argument("--vs-name", default="model", help="model name to send to the --vs server")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level with --vs")
    args = parser.parse_args()
    proc = None if args.url else start_server(args)
    url = args.url or f"http://127.0.0.1:{args.port}"
    name = args.name or args.model
    try:
        one_request(url, name, PROMPTS[0], 4)  # warm-up
        if args.vs:
            one_request(args.vs, args.vs_name, PROMPTS[0], 4)
            json_mode = ", JSON objects" if args.json else ""
            print(f"{name} ({args.dtype}{json_mode}) vs {args.vs}; {cpu_model()}, {os.cpu_count()} CPUs")
            return compare(url, name, args.vs, args.vs_name, args)
        extra = body_extra(args)
        rows = [run_level(url, name, int(c), args.requests, args.max_tokens, extra) for c in args.levels.split(",")]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
    print(
        f"\n{name}, {args.dtype}, max batch {args.max_batch}, {args.requests} requests per client, max_tokens "
        f"{args.max_tokens}, greedy, streamed chat{', JSON objects' if args.json else ''}; {cpu_model()}, "
        f"{os.cpu_count()} CPUs\n"
    )
    columns = ["clients", "requests", "errors", "tokens", "wall s", "tokens/s", "vs 1 client", "TTFT p50 / p95 s"]
    print("| " + " | ".join([*columns, "ITL p50 / p95 ms"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = next((r["tok_s"] for r in rows if r["clients"] == 1), None)  # the 1-client level, where it ran
    for r in rows:
        ratio = f"{r['tok_s'] / base:.2f}x" if base else "-"
        print(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens']} | {r['wall']:.1f} | "
            f"{r['tok_s']:.1f} | {ratio} | {r['ttft_p50']:.2f} / {r['ttft_p95']:.2f} | "
            f"{1000 * r['itl_p50']:.0f} / {1000 * r['itl_p95']:.0f} |"
        )
    per_request = [n for r in rows for n in r["request_tokens"]]
    print(f"\nmedian tokens per request: {statistics.median(per_request) if per_request else 0:.1f} (over all levels)")
    print(f"(the same {len(PROMPTS)} prompts in turn at every level: a server keeping prefixes may reuse them)")


if __name__ == "__main__":
    main()
