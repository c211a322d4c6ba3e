"""Errors with OpenAI's body, {"error": {"message", "type", "param", "code"}}: `ApiError`, and the handlers that give
it for a body pydantic refused or an unknown path, in one line naming the argument at fault."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from arlm.errors import ArlmError
from arlm.serving.request_id import name_failed
from arlm.serving.schemas import NotText

NOT_UNION = ("extra_forbidden", "missing")  # errors of a model's own keys, never of a union's types
UNSUPPORTED = {  # OpenAI's arguments this server does not serve, and why (else: "unrecognized request argument")
    **dict.fromkeys(
        ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"),
        "tool calling is not supported by this server (arlm has no tools); describe the tool in the messages",
    ),
    "reasoning_effort": 'reasoning_effort other than "none" is not supported (the model does not reason in hidden '
    "tokens)",
    "modalities": "modalities is not supported (this server answers in text only)",
    "audio": "audio output is not supported (this server answers in text only)",
    "service_tier": 'service_tier other than "auto" or "default" is not supported (this server has one tier)',
    "prompt_cache_retention": 'prompt_cache_retention other than "in_memory" is not supported (a prompt is kept in '
    "memory only, with --reuse-prefix)",
    "best_of": "best_of is not supported: ask for n choices and pick one",
    "suffix": "suffix (insertion between a prompt and a suffix) is not supported",
    "prediction": "prediction (predicted outputs) is not supported; prompt lookup drafts from the context by itself",
    "web_search_options": "web_search_options is not supported (this server has no web search)",
}


class ApiError(Exception):
    """An error answered with OpenAI's body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = dict(headers or {})  # (405's Allow)
        # OpenAI's: an unknown model (404) is an invalid request too; a full queue is a rate limit; a bug a server error
        self.type = type or {429: "rate_limit_error"}.get(status, "server_error" if status >= 500 else None)
        self.type = self.type or "invalid_request_error"

    @classmethod
    def refusal(cls, exc: ArlmError) -> ApiError:
        """arlm's refusal of a request as a 400 naming its argument (`param`) and kind (`code`)."""
        return cls(400, str(exc), param=exc.param, code=exc.code)

    @classmethod
    def of_event(cls, event: dict) -> ApiError:
        """The error of a scheduler's error event (serving/scheduler.py)."""
        return cls(event["status"], event["message"], param=event["param"], code=event["code"])

    def body(self) -> dict:
        """OpenAI's error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The JSON response."""
        headers = {"Retry-After": "1"} if self.status == 429 else {}  # a full queue: worth trying again soon
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **headers})


def error_handlers(app: FastAPI) -> None:
    """Every refusal answered with OpenAI's error body: ApiError, a body pydantic refused, an unknown path; a bug."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ArlmError)
    async def refused(request: Request, exc: ArlmError) -> JSONResponse:
        return ApiError.refusal(exc).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = _not_found(request.url.path) if exc.status_code == 404 else str(exc.detail)
        return ApiError(exc.status_code, message, headers=exc.headers).response()  # (405: Allow, as RFC 9110 asks)

    @app.exception_handler(Exception)
    async def bug(
        request: Request, exc: Exception
    ) -> JSONResponse:  # (Starlette then raises it again: its traceback is logged)
        rid = getattr(request.state, "request_id", "")  # (answered from outside RequestId: its header set here)
        name_failed([rid])
        return ApiError(500, f"internal error: {exc}", headers={"x-request-id": rid} if rid else None).response()


def _validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem of a body pydantic refused, in one line."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    param = ".".join(loc) or None
    if isinstance(cause := first.get("ctx", {}).get("error"), NotText):  # a string that is no text, where it is
        return ApiError(400, str(cause), param=cause.param)
    if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type", "model_type"):
        return ApiError(400, "the body must be a JSON object (Content-Type: application/json)")
    own = next((e for e in exc.errors() if e["type"] in NOT_UNION and any(map(_is_type_tag, e.get("loc", ())))), None)
    if own is not None:  # a key of a union's object form (a text part's), named without the form's tag
        path = ".".join(str(p) for p in own["loc"] if p != "body" and not _is_type_tag(p))
        what = "unrecognized request argument" if own["type"] == "extra_forbidden" else "missing required argument"
        return ApiError(400, f"{what}: {path}", param=path)
    union = _union_refusal(exc.errors())
    if union:
        field, forms = union
        return ApiError(400, f"{field}: expected one of {', '.join(forms)}", param=field)
    if first.get("type") == "extra_forbidden":
        return ApiError(400, UNSUPPORTED.get(param or "", f"unrecognized request argument: {param}"), param=param)
    if first.get("type") == "missing":
        return ApiError(400, f"missing required argument: {param}", param=param)
    message = first["msg"].removeprefix("Value error, ")  # (pydantic's prefix to a validator's own message)
    return ApiError(400, f"{param}: {message}" if param else message, param=param)


def _not_found(path: str) -> str:
    """A 404's message: the path, and where an API path lies (under /v1), or that the Responses API's other paths
    (retrieve, delete, cancel, input_items, input_tokens, compact) are not served."""
    api = path.removeprefix("/v1")
    if path.startswith("/v1/responses/"):
        return f"not found: {path}; this server keeps no responses and serves POST /v1/responses only"
    if not path.startswith("/v1/") and api in ("/chat/completions", "/completions", "/responses", "/models"):
        return f"not found: {path}; the API is under /v1 (base URL http://HOST:PORT/v1): /v1{path}"
    return f"not found: {path}"


def _union_refusal(errors: list[dict]) -> tuple[str, list[str]] | None:
    """(field, its types) where every type of a union field refused the value: pydantic reports one error per type,
    each naming its type in the location after the field's (("prompt", "str"), ("prompt", "list[int]", 0), ...)."""
    locs = [[p for p in e.get("loc", ()) if p != "body"] for e in errors if e["type"] not in NOT_UNION]
    for i in range(1, len(locs[0]) if locs else 0):
        tags = [loc[i] for loc in locs if len(loc) > i and loc[:i] == locs[0][:i]]
        forms = list(dict.fromkeys(tags))
        if len(forms) > 1 and all(_is_type_tag(tag) for tag in forms):
            return ".".join(map(str, locs[0][:i])), forms
    return None


def _is_type_tag(part: str | int) -> bool:
    """Whether a location part names a type (pydantic's tag of a union member), not a field or an index."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool") or part[:1].isupper())
