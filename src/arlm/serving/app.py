"""The web app (FastAPI on uvicorn): OpenAI's /v1/completions, /v1/chat/completions, /v1/responses (one message in,
one out: serving/openai_responses.py) and /v1/models, /health, /metrics, the playground at / and its trace endpoint
/v1/arlm/trace. Handlers only translate: a request becomes a scheduler Job whose events come back through an
asyncio queue, and leave as JSON or server-sent events.

Errors have OpenAI's body, {"error": {"message", "type", "param", "code"}}: 400 for a request that cannot run
(bad JSON, an unknown or out-of-range argument, a prompt longer than the context), 404 for an unknown model or
path, 429 when the queue is full. A client that goes away cancels its request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from arlm.decoding.batch import BATCH_STRATEGIES
from arlm.serving.auth import RequireKey
from arlm.serving.body import LimitBody
from arlm.serving.errors import ApiError, error_handlers
from arlm.serving.jobs import Job, QueueFull
from arlm.serving.openai_responses import ResponsesFormat, ResponsesRequest
from arlm.serving.request_id import RequestId
from arlm.serving.responses import OpenAIFormat, TraceFormat
from arlm.serving.scheduler import Scheduler
from arlm.serving.schemas import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    Sampling,
    TokenizeRequest,
    TraceRequest,
)
from arlm.serving.server import Server

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # a proxy passes each event on as it comes


class Events:
    """The events of a request's jobs (one per prompt), handed from the scheduler's threads to the event loop: each
    job's choice indices shifted to its place in the response, one "done" once every job is done."""

    def __init__(self, jobs: int = 1) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.left = jobs

    def put(self, event: dict) -> None:
        """Called from another thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def emitter(self, offset: int) -> Callable[[dict], None]:
        """put() for the job whose choices come at offset, offset + 1, ... in the response."""
        if offset == 0:
            return self.put
        return lambda event: self.put({**event, "index": event["index"] + offset} if "index" in event else event)

    async def __aiter__(self) -> AsyncIterator[dict]:
        cached = 0  # the jobs' reused prompt tokens, summed into the last "done"
        while True:
            event = await self.queue.get()
            if event["type"] == "done":
                self.left -= 1
                cached += event["usage"]["prompt_tokens_details"]["cached_tokens"]
                if self.left:
                    continue
                event = {**event, "usage": {**event["usage"], "prompt_tokens_details": {"cached_tokens": cached}}}
            yield event
            if event["type"] in ("done", "error"):
                return


def submit(server: Server, jobs: list[Job]) -> None:
    """Queue a request's jobs; a full queue is a 429 (the scheduler's refusals, ArlmErrors, are 400s by the app's
    handler, serving/errors.py)."""
    try:
        server.scheduler.submit(*jobs)
    except QueueFull as exc:
        raise ApiError(429, str(exc), code="queue_full") from None


def cancel(server: Server, jobs: list[Job]) -> None:
    """End what is left of a request's jobs (its client went away, or one of them failed)."""
    for job in jobs:
        if job.open_choices:
            server.scheduler.cancel(job)


async def watch_disconnect(request: Request, on_disconnect: Callable[[], None]) -> None:
    """Call on_disconnect when the client goes away (the body has been read, so the next message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


def sse(data: str | dict, named: bool = False) -> str:
    """One server-sent event; named: headed by an event line of its type (the Responses API's)."""
    head = f"event: {data['type']}\n" if named else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass(frozen=True)
class Framing:
    """How a stream's events go out: Chat Completions' (data lines, an error as its error body, then [DONE]), or
    the Responses API's (named=True: each headed by its type; error: the failure's last event; done=False)."""

    named: bool = False
    error: Callable[[ApiError], dict] = ApiError.body
    done: bool = True


CHUNKS = Framing()


async def run_job(
    request: Request,
    server: Server,
    jobs: list[Job],
    events: Events,
    stream: bool,
    chunks: Callable,
    start: Iterable[dict] = (),
    final: Callable[[], dict] | None = None,
    framing: Framing = CHUNKS,
) -> Response:
    """Submit a request's jobs and answer: a stream of server-sent events (chunks of each event, as framing has
    them), or, after the last event, final() as JSON. A client that disconnects cancels the jobs."""
    for job in jobs:
        job.request_id = request.state.request_id  # (serving/request_id.py: a bug's traceback names it)
    submit(server, jobs)
    if stream:
        return StreamingResponse(
            _stream(server, jobs, events, chunks, start, framing),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )
    watcher = asyncio.create_task(watch_disconnect(request, lambda: cancel(server, jobs)))
    try:
        async for event in events:
            if event["type"] == "error":
                raise ApiError.of_event(event)
            chunks(event)
    finally:
        watcher.cancel()
        cancel(server, jobs)
    return JSONResponse(final())


async def _stream(
    server: Server, jobs: list[Job], events: Events, chunks: Callable, start: Iterable[dict], framing: Framing
) -> AsyncIterator[str]:
    try:
        for chunk in start:
            yield sse(chunk, framing.named)
        async for event in events:
            if event["type"] == "error":
                yield sse(framing.error(ApiError.of_event(event)), framing.named)
                break
            for chunk in chunks(event):
                yield sse(chunk, framing.named)
        if framing.done:
            yield sse("[DONE]")
    finally:  # also when the client went away (the response task is cancelled)
        cancel(server, jobs)


def create_app(
    scheduler: Scheduler,
    model_id: str,
    plain_chat: bool = False,
    api_key: str | None = None,
    origins: list[str] | None = None,
    dtype: str | None = None,
    max_body: int = 16 * 2**20,
) -> FastAPI:
    """The app; its lifespan starts the scheduler and, at shutdown, lets it finish what it holds. With api_key, the
    API answers only requests that carry it (serving/auth.py); origins: the web pages ("*": any) whose scripts may
    call it from a browser (CORS); dtype: the --dtype the model was loaded at, which /health reports; max_body: the
    largest request body in bytes (serving/body.py)."""
    server = Server(scheduler, model_id, plain_chat, auth=bool(api_key), dtype=dtype)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.shutdown)

    app = FastAPI(title="arlm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    error_handlers(app)
    _info_routes(app, server)
    _generation_routes(app, server)
    _responses_route(app, server)
    _tokenizer_routes(app, server)
    app.add_middleware(LimitBody, max_bytes=max_body)  # (middleware added later wraps it: the key is checked first)
    if api_key:
        app.add_middleware(RequireKey, key=api_key)
    app.add_middleware(CountRequests, scheduler=scheduler, paths={r.path for r in app.routes})  # counts 401s too
    if origins:  # outside the key: a preflight carries none, and a 401 must reach the page's script readable
        app.add_middleware(  # (a page's script may read a 429's Retry-After and a 401's WWW-Authenticate)
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "WWW-Authenticate", "X-Request-Id"],
        )
    app.add_middleware(RequestId)  # outermost: on every answer, a refusal's and a CORS preflight's too
    return app


class CountRequests:
    """ASGI middleware counting requests by endpoint and status once each has ended: the status it was answered with,
    499 where the client went away before the whole answer (nginx's "client closed request"), 500 where a bug left
    none (a plain ASGI wrapper: it passes the client's disconnect messages on to the handlers)."""

    def __init__(self, app: ASGIApp, scheduler: Scheduler, paths: set[str]) -> None:
        self.app, self.metrics, self.paths = app, scheduler.metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.paths else "/v1/models/{model}" if path.startswith("/v1/models/") else "other"
        started, answered, gone = [], [], []

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                gone.append(True)
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.append(True)
            await send(message)

        try:
            await self.app(scope, watching_receive, counting_send)
        finally:  # (a bug's 500 goes out from the app's outermost layer, past this one)
            status = "499" if gone else str(started[0]) if started else "500"
            self.metrics.requests.labels(endpoint=endpoint, status=status).inc()


def _info_routes(app: FastAPI, server: Server) -> None:
    scheduler = server.scheduler

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> str:
        return _static("playground.html")

    @app.get("/tokens.js")
    async def playground_tokens() -> Response:
        return Response(_static("tokens.js"), media_type="text/javascript")

    @app.get("/health")
    async def health() -> JSONResponse:
        chat = bool(server.tokenizer.chat_template) or server.plain_chat
        features = {"chat_template": chat, "draft": scheduler.draft is not None, "auth": server.auth}
        model = {"model": server.model_id, "dtype": server.dtype, "context": server.context}
        alive = scheduler.alive()  # a decoding thread that died cannot answer: 503, for a load balancer to see
        body = {"status": "ok" if alive else "error", **model, **features, **scheduler.state()}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(scheduler.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def card() -> dict:
        """The served model as OpenAI's model object, with vLLM's max_model_len."""
        card = {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "arlm"}
        return {**card, "max_model_len": server.context}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model:path}")  # a name as given may hold slashes (runs/quickstart)
    async def model(model: str) -> dict:
        server.check_model(model)
        return card()


def _static(name: str) -> str:
    """A file of the playground (static/), as text."""
    return resources.files("arlm.serving").joinpath("static", name).read_text(encoding="utf-8")


def _generation_routes(app: FastAPI, server: Server) -> None:
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        server.check_model(req.model)
        texts = server.split_prompts(req.prompt)
        prompts = await asyncio.to_thread(lambda: [server.encode_prompt(p) for p in texts])  # (off the event loop)
        events = Events(len(prompts))
        top = -1 if req.logprobs is None else req.logprobs
        scored = req.echo and req.logprobs is not None
        max_tokens = req.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
        jobs = [
            server.job(req, p, max_tokens, events.emitter(k * req.n), top_logprobs=top, scored=scored)
            for k, p in enumerate(prompts)
        ]
        echo = None
        if req.echo:  # each choice's prompt text: as given, or its token ids decoded (special tokens' text kept)
            decode = lambda ids: server.tokenizer.decode(ids, skip_special=False)
            echo = [t if isinstance(t, str) else decode(t) for t in texts for _ in range(req.n)]
        n, usage = req.n * len(prompts), _include_usage(req)
        fmt = OpenAIFormat(
            "completion", server.model_id, n, sum(map(len, prompts)), usage, echo=echo, scored=scored,
            piece_bytes=server.tokenizer.piece_bytes,
        )  # fmt: skip
        final = lambda: fmt.response(with_logprobs=req.logprobs is not None)
        start = fmt.start_chunks()
        return await run_job(request, server, jobs, events, req.stream, fmt.chunks, start=start, final=final)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request) -> Response:
        server.check_model(req.model)
        prompt = await asyncio.to_thread(server.encode_chat, req.messages)
        events = Events()
        top = (req.top_logprobs or 0) if req.logprobs else -1
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        job = server.job(req, prompt, req.max_completion_tokens or req.max_tokens, events.put, top_logprobs=top)
        usage, piece_bytes = _include_usage(req), server.tokenizer.piece_bytes
        fmt = OpenAIFormat("chat", server.model_id, req.n, len(prompt), usage, piece_bytes=piece_bytes)
        final = lambda: fmt.response(with_logprobs=req.logprobs)
        start = fmt.start_chunks()
        return await run_job(request, server, [job], events, req.stream, fmt.chunks, start=start, final=final)

    @app.post("/v1/arlm/trace")
    async def trace(req: TraceRequest, request: Request) -> Response:
        server.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(400, "give either prompt or messages", param="prompt")
        encode, given = (server.encode_chat, req.messages) if req.messages else (server.encode_prompt, req.prompt)
        prompt = await asyncio.to_thread(encode, given)
        events = Events()
        batched = req.resolved_strategy() in BATCH_STRATEGIES
        job = server.job(req, prompt, req.max_tokens, events.put, top_logprobs=req.top_logprobs if batched else -1)
        job.trace = True
        fmt = TraceFormat(server.tokenizer, req.top_logprobs)
        start = [{"type": "start", "strategy": job.config.strategy, "prompt_tokens": len(prompt), "n": req.n}]
        return await run_job(request, server, [job], events, True, fmt.events, start=start)


def _responses_route(app: FastAPI, server: Server) -> None:
    """OpenAI's Responses API: one message in (instructions and input through the chat template), one out."""

    @app.post("/v1/responses")
    async def responses(req: ResponsesRequest, request: Request) -> Response:
        server.check_model(req.model)
        req.check()
        encode = lambda chat: server.encode_chat(chat, param="input")
        prompt = await asyncio.to_thread(req.fit, encode, server.context)
        events = Events()
        job = server.job(req, prompt, req.max_output_tokens, events.put, top_logprobs=req.logprobs())
        fmt = ResponsesFormat(req, server.model_id, len(prompt), server.tokenizer.piece_bytes)
        start, framing = fmt.start_events(), Framing(named=True, error=fmt.error_event, done=False)
        return await run_job(request, server, [job], events, req.stream, fmt.events, start, fmt.response, framing)


def _tokenizer_routes(app: FastAPI, server: Server) -> None:
    """vLLM's tokenizer endpoints, which lm-evaluation-harness's local-completions uses when a server has them."""
    tok = server.tokenizer
    special = lambda i: tok.token_text(i) if i is not None else None

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        names = {"eos_token": tok.eos_id, "bos_token": tok.bos_id, "pad_token": tok.pad_id}
        info = {"tokenizer_class": f"arlm-{tok.kind}", **{k: special(i) for k, i in names.items()}}
        info["chat_template"] = tok.chat_template
        return {**info, "model_max_length": server.context, "vocab_size": tok.vocab_size}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        if req.model is not None:
            server.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(400, "give either prompt or messages", param="prompt")
        ids = await asyncio.to_thread(
            lambda: (
                tok.encode(req.prompt)
                if req.prompt is not None
                else server.encode_chat(req.messages, req.add_generation_prompt)
            )
        )
        return {"count": len(ids), "max_model_len": server.context, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        if req.model is not None:
            server.check_model(req.model)
        server.check_ids(req.tokens, "token ids", "tokens")
        return {"prompt": tok.decode(req.tokens, skip_special=False)}  # (as vLLM's: the chat markup kept)


def _include_usage(req: Sampling) -> bool:
    """Whether a stream ends in a usage chunk; stream_options without stream is refused, as OpenAI's API does."""
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
    return bool(req.stream_options and req.stream_options.include_usage)
