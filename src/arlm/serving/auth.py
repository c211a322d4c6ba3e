"""`arlm serve --api-key`: every request to the API (/v1/...: what runs the model) must carry `Authorization: Bearer
KEY` (the scheme in any case), the header OpenAI's clients send their api_key in; any other gets 401 and OpenAI's
error body. The page, /health, /metrics and the tokenizer's endpoints stay open, as vLLM's --api-key leaves all but
/v1 (lm-eval reads them so)."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

API = "/v1/"


class RequireKey:
    """ASGI middleware refusing requests without the key (compared in constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.expected = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API):
            return await self.app(scope, receive, send)
        found = [value for name, value in scope["headers"] if name == b"authorization"]  # the headers read once
        scheme, _, given = found[0].partition(b" ") if len(found) == 1 else (b"", b"", b"")  # (RFC 7235: any case)
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(b" "), self.expected):
            return await self.app(scope, receive, send)
        message = "incorrect API key" if found else "missing API key: send the header Authorization: Bearer KEY"
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
