"""The web app (FastAPI on uvicorn): OpenAI's /v1/completions, /v1/chat/completions and /v1/models, /health,
/metrics, the playground at / and its trace endpoint /v1/arlm/trace. Handlers only translate: a request becomes a
scheduler Job whose events come back through an asyncio queue, and leave as JSON or server-sent events.

Errors have OpenAI's body, {"error": {"message", "type", "param", "code"}}: 400 for a request that cannot run
(bad JSON, an unknown or out-of-range argument, a prompt longer than the context), 404 for an unknown model or
path, 429 when the queue is full. A client that goes away cancels its request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from arlm.data.chat import encode_conversation
from arlm.decoding.batch import BATCH_STRATEGIES
from arlm.decoding.generate import check_length
from arlm.decoding.grammar import JsonGrammar
from arlm.decoding.settings import unread, unread_message
from arlm.errors import ArlmError
from arlm.serving.auth import RequireKey
from arlm.serving.body import LimitBody
from arlm.serving.errors import ApiError, error_handlers
from arlm.serving.jobs import Job, QueueFull
from arlm.serving.request_id import RequestId
from arlm.serving.responses import OpenAIFormat, TraceFormat
from arlm.serving.scheduler import Scheduler
from arlm.serving.schemas import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    Sampling,
    TokenizeRequest,
    TraceRequest,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # a proxy passes each event on as it comes


class Server:
    """What the handlers need: the scheduler, the tokenizer, the served model's name, dtype and context, whether the
    API asks a key."""

    def __init__(
        self,
        scheduler: Scheduler,
        model_id: str,
        plain_chat: bool = False,
        auth: bool = False,
        dtype: str | None = None,
    ) -> None:
        self.scheduler, self.model_id, self.plain_chat, self.auth = scheduler, model_id, plain_chat, auth
        self.dtype = dtype
        self.tokenizer = scheduler.tokenizer
        self.context = scheduler.engine.max_len
        self.created = int(time.time())  # the model card's "created": when the server started

    def check_model(self, name: str) -> None:
        """404 unless the request names the served model."""
        if name != self.model_id:
            message = f"the model {name!r} does not exist; this server serves {self.model_id!r}"
            raise ApiError(404, message, param="model", code="model_not_found")

    def split_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
        """A completion's prompt (a text or token ids) or list of prompts, as a list of prompts."""
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ApiError(
                400, 'prompt holds no token ids (an empty list); send a text ("" starts from BOS)', param="prompt"
            )
        prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
        if len(prompts) > self.scheduler.max_queue:
            message = f"{len(prompts)} prompts in one request; this server queues at most {self.scheduler.max_queue}"
            raise ApiError(400, message, param="prompt")
        return prompts

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """One prompt (text or token ids) as ids; an empty one is BOS."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.check_ids(ids, "prompt token ids", "prompt")
        if not ids:
            bos = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
            ids = [bos if bos is not None else 0]  # an empty prompt starts from BOS, as arlm generate does
        return ids

    def check_ids(self, ids: list[int], what: str, param: str) -> None:
        """400 unless every id is one of the tokenizer's."""
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"{what} must be in [0, {vocab})", param=param)

    def encode_chat(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> list[int]:
        """A conversation through the model's chat template (or as its chat-data training rendered it), ending in
        the assistant's cue."""
        if not self.tokenizer.chat_template and not self.plain_chat:
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
        template = self.tokenizer.chat_template or ""
        turns = [{"role": _role(m.role, template), "content": m.text()} for m in messages]
        return encode_conversation(turns, self.tokenizer, add_generation_prompt)

    def job(
        self,
        req: Sampling,
        prompt: list[int],
        max_tokens: int | None,
        emit: Callable[[dict], None],
        top_logprobs: int = -1,
        scored: bool = False,
    ) -> Job:
        """The scheduler job of a request (default max_tokens: what the context leaves); scored: the prompt's
        tokens get log-probabilities too."""
        given = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        held = "messages" if getattr(req, "messages", None) else "prompt"  # the arguments the request named
        check_length(len(prompt), max_tokens or 0, self.context, name=given, prompt=held)  # (ArlmError: a 400)
        if max_tokens is None:
            max_tokens = self.context - len(prompt)
        config = req.generation_config(max_tokens)
        # a setting the strategy would ignore is refused; OpenAI's top_p at temperature 0 is not (clients send it
        # with every request, as OpenAI's API takes it), arlm's top_k and min_p are
        unused = unread(config, sorted(req.model_fields_set), at_zero=False)
        if unused:
            raise ApiError(400, unread_message(config, unused[0]), param=unused[0])
        try:
            logit_bias = req.logit_biases(self.tokenizer.vocab_size)
        except ValueError as e:
            raise ApiError(400, str(e), param="logit_bias") from None
        schema = None if req.response_format is None else req.response_format.constraint()
        try:
            vocab = self.scheduler.model.config.vocab_size  # (the logits' width)
            grammar = None if schema is None else JsonGrammar(self.tokenizer, schema, vocab)
        except ArlmError as e:
            raise ApiError(400, str(e), param="response_format") from None
        return Job(
            prompt=prompt,
            config=config,
            emit=emit,
            n=req.n,
            eos_id=self.tokenizer.eos_id,
            top_logprobs=top_logprobs,
            prompt_logprobs=scored,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=logit_bias,
            grammar=grammar,
            stops=req.stops(),
        )


def _role(role: str, template: str) -> str:
    """A message's role as the chat template gets it: OpenAI's "developer" (the system prompt of its newer models)
    as "system", unless the template names the role itself (as a quoted string: not a word of its default prompt)."""
    names = "'developer'" in template or '"developer"' in template
    return "system" if role == "developer" and not names else role


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


def sse(data: str | dict) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def run_job(
    request: Request,
    server: Server,
    jobs: list[Job],
    events: Events,
    stream: bool,
    chunks: Callable,
    start: Iterable[dict] = (),
    final: Callable[[], dict] | None = None,
) -> Response:
    """Submit a request's jobs and answer: a stream of server-sent events (chunks of each event, then [DONE]), or,
    after the last event, final() as JSON. A client that disconnects cancels the jobs."""
    for job in jobs:
        job.request_id = request.state.request_id  # (serving/request_id.py: a bug's traceback names it)
    submit(server, jobs)
    if stream:
        return StreamingResponse(
            _stream(server, jobs, events, chunks, start), media_type="text/event-stream", headers=STREAM_HEADERS
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
    server: Server, jobs: list[Job], events: Events, chunks: Callable, start: Iterable[dict]
) -> AsyncIterator[str]:
    try:
        for chunk in start:
            yield sse(chunk)
        async for event in events:
            if event["type"] == "error":
                yield sse(ApiError.of_event(event).body())
                break
            for chunk in chunks(event):
                yield sse(chunk)
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
        return resources.files("arlm.serving").joinpath("static/playground.html").read_text(encoding="utf-8")

    @app.get("/tokens.js")
    async def playground_tokens() -> Response:
        script = resources.files("arlm.serving").joinpath("static/tokens.js").read_text(encoding="utf-8")
        return Response(script, media_type="text/javascript")

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
