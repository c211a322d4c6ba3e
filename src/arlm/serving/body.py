"""`arlm serve --max-body-mb`: a request whose body is over the limit gets 413 and OpenAI's error body before the app
reads any of it (a declared Content-Length at once, a chunked body as soon as it passes the limit), so that no request
can hold more memory than that; the app then gets the body whole."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arlm.serving.errors import ApiError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class LimitBody:
    """ASGI middleware answering 413 to a body over max_bytes; below it, the body is read here and handed on."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared and declared[0].isdigit() and int(declared[0]) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        messages, size = [], 0
        while True:  # (a request body: JSON, bounded by the limit)
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: the app hears it
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()  # then the client's disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = f"{self.max_bytes / 2**20:g} MiB" if self.max_bytes >= 2**20 else f"{self.max_bytes} bytes"
        message = f"the request body is over the server's limit of {size} (arlm serve --max-body-mb)"
        await ApiError(413, message).response()(scope, receive, send)
