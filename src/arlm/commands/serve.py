"""Serve a model over HTTP: an OpenAI-compatible API with continuous batching, and a decoding playground at /."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING

from arlm.commands.decoding import load_draft, note_dtype
from arlm.commands.options import (
    add_device_argument,
    add_draft_arguments,
    add_dtype_argument,
    add_model_argument,
    model_of,
)
from arlm.config import KV_DTYPES
from arlm.errors import ArlmError, optional_package

if TYPE_CHECKING:
    import uvicorn

DEFAULT_CONTEXT = 2048  # positions per slot, unless the model's context is shorter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `arlm serve`."""
    add_model_argument(parser, "model to serve", default="smollm2")
    add_dtype_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    parser.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429 (default 64)")
    limit = f"positions per sequence (default: the model's context, at most {DEFAULT_CONTEXT})"
    parser.add_argument("--context", type=int, default=0, help=limit)
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=512,
        help="longer prompts are prefilled in chunks of this many tokens (default 512)",
    )
    reuse_help = (
        "start a prompt from the keys and values a free slot holds of its beginning (a chat's earlier turns), as "
        "llama-server does; its logits equal a fresh prefill's up to rounding (default: on; --no-reuse-prefix: "
        "replies bit for bit generate()'s, for prompts within --prefill-chunk)"
    )
    parser.add_argument("--reuse-prefix", action=argparse.BooleanOptionalAction, default=True, help=reuse_help)
    add_draft_arguments(parser)
    kv_help = "the KV cache's dtype (default auto: the model's; bfloat16 halves it)"
    parser.add_argument("--kv-dtype", default="auto", choices=KV_DTYPES, help=kv_help)
    parser.add_argument("--name", help="the model name clients send (default: MODEL as given)")
    key_help = "answer only requests with Authorization: Bearer KEY (default: $ARLM_API_KEY; unset: no key)"
    parser.add_argument("--api-key", default=os.environ.get("ARLM_API_KEY") or None, help=key_help)
    origin_help = "a web page's origin whose scripts may call the API from a browser (repeat; '*': any; default none)"
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN", help=origin_help)
    body_help = "the largest request body in MiB; a larger one gets 413 before it is read (default 16)"
    parser.add_argument("--max-body-mb", type=float, default=16, help=body_help)
    add_device_argument(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def check_settings(args: argparse.Namespace) -> None:
    """Refuse, before the model loads, settings under which the server could answer nothing."""
    if args.max_batch < 1 or args.max_queue < 1 or args.prefill_chunk < 1:
        raise ArlmError("--max-batch, --max-queue and --prefill-chunk must be >= 1")
    if args.context < 0 or args.context == 1:
        raise ArlmError(f"--context must be >= 2 (a prompt token and a new one) or 0 (the default), got {args.context}")
    if args.draft_dtype and not args.draft:
        raise ArlmError("--draft-dtype does nothing without --draft MODEL")
    if not 0 < args.max_body_mb < float("inf"):
        raise ArlmError(f"--max-body-mb must be a number > 0, got {args.max_body_mb:g}")
    if args.api_key is not None and not args.api_key.strip():
        raise ArlmError("--api-key is empty; give the key clients will send (or leave the flag out: no key)")


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until Ctrl-C / SIGTERM (which lets in-flight requests finish)."""
    uvicorn = optional_package("uvicorn", "arlm serve", "serve")
    for package in ("fastapi", "prometheus_client"):  # what serving.app and serving.scheduler import
        optional_package(package, "arlm serve", "serve")
    from arlm.interop.checkpoint import LoadedModel  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device  # lazy: kept out of --help
    from arlm.model.inference import PROBE_ROWS, optimize_for_decoding  # lazy: kept out of --help
    from arlm.serving.app import create_app  # lazy: kept out of --help
    from arlm.serving.scheduler import Scheduler  # lazy: kept out of --help
    from arlm.serving.threads import in_own_thread  # lazy: kept out of --help

    check_settings(args)
    device, dtype = pick_device(args.device, args.dtype), args.dtype
    model_ref = model_of(args)

    def build() -> tuple[LoadedModel, Scheduler]:
        loaded = load_model(model_ref, device=device, dtype=dtype)
        model = optimize_for_decoding(loaded.model, batch_invariant=True, rows=max(args.max_batch, PROBE_ROWS))
        draft = load_draft(args.draft, loaded, model_ref, device, args.draft_dtype) if args.draft else None
        if args.context > model.config.block_size:
            raise ArlmError(f"--context {args.context} exceeds the model's context of {model.config.block_size}")
        context = args.context or min(model.config.block_size, DEFAULT_CONTEXT)
        scheduler = Scheduler(
            model,
            loaded.tokenizer,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            max_len=context,
            prefill_chunk=args.prefill_chunk,
            reuse_prefix=args.reuse_prefix,
            draft=draft,
            kv_dtype=args.kv_dtype,
        )
        return loaded, scheduler

    sockets = bound_sockets(args.host, args.port)  # before the model loads: a busy port fails at once
    try:
        note_dtype(dtype, device)
        # the main thread runs no parallel kernels, so that the batch thread's OpenMP pool is the only one
        loaded, scheduler = in_own_thread(build, "arlm-load")
        name = args.name or model_ref
        chats = loaded.config.data.format == "chat"  # a model fine-tuned on chats, rendered as its training saw them
        keys = {"api_key": args.api_key, "origins": args.allow_origin, "max_body": int(args.max_body_mb * 2**20)}
        app = create_app(scheduler, name, plain_chat=chats, dtype=loaded.dtype, **keys)
        port = sockets[0].getsockname()[1]
        where = f"[{args.host}]" if ":" in args.host else args.host
        keyed = ", with its API key" if args.api_key else ""
        at = f"http://{where}:{port}"
        print(f"serving {name} ({loaded.dtype}) on {at} (playground at /, API at /v1{keyed})", flush=True)
        config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level)
        server = uvicorn.Server(config)
        cut = counting_cut(server)
        serve_until_signal(server, sockets)
    finally:
        for sock in sockets:
            sock.close()
    return stopped(cut)


def stopped(cut: list[int]) -> int:
    """Say how the server stopped; the exit code: 1 where a forced quit cut requests (uvicorn cancels them: their
    clients get cut streams or no answer), else 0."""
    if cut:
        print(f"stopped at a second Ctrl-C: {cut[0]} request(s) in flight were cut", file=sys.stderr)
        return 1
    print("stopped: every request in flight was answered", file=sys.stderr)
    return 0


def counting_cut(server: uvicorn.Server) -> list[int]:
    """A list that receives how many requests were in flight when a second Ctrl-C makes the server quit at once
    (uvicorn's signal handler: the first signal drains, a second SIGINT forces the exit); it stays empty where
    none were cut."""
    cut: list[int] = []
    handle = server.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        forced = server.force_exit
        handle(sig, frame)
        if server.force_exit and not forced and server.server_state.tasks:
            cut.append(len(server.server_state.tasks))

    server.handle_exit = handle_exit  # (uvicorn installs its handlers from the instance's attribute)
    return cut


def serve_until_signal(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    """Run a uvicorn server on `sockets` until Ctrl-C / SIGTERM. uvicorn turns either into a graceful shutdown
    (in-flight requests finish, then the scheduler drains), then raises the signal again; handlers that ignore it
    make that a normal exit, code 0."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bound_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets bound to each address `host` names, at `port` (0: one free port for all), not yet listening
    (uvicorn listens on them once the model is loaded); a bad port, a busy one or an unknown host is one line."""
    if not 0 <= port <= 65535:
        raise ArlmError(f"--port must be 0-65535, got {port}")
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ArlmError(f"cannot listen on {host}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # its IPv4 twin binds on its own
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]  # port 0: the free port the first one got, for the others too
    except OSError as exc:
        for sock in sockets:
            sock.close()
        busy = exc.errno == errno.EADDRINUSE
        hint = " (another server there? choose another --port, or 0 for a free one)" if busy else ""
        raise ArlmError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sockets
