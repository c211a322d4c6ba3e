"""`x-request-id` on every answer, as OpenAI's API sends it (its client reads it as `response._request_id`): the id a
proxy or client sent, where it is a short printable token, or a new `req_...`; a failed request's traceback on the
server's stderr names it, so that a user's report and the server's log meet."""

from __future__ import annotations

import re
import sys
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
GIVEN = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")  # what is echoed; anything else is replaced by a new id


def name_failed(ids: list[str]) -> None:
    """The line on stderr above a bug's traceback: the requests it failed."""
    print(f"arlm serve: internal error in request {', '.join(i or '(no id)' for i in ids)}:", file=sys.stderr)


def request_id(scope: Scope) -> str:
    """The request's id: the one a well-formed x-request-id header gave, or a new one."""
    given = [value for name, value in scope["headers"] if name == HEADER]
    if given and GIVEN.fullmatch(given[0]):
        return given[0].decode()
    return "req_" + uuid.uuid4().hex


class RequestId:
    """ASGI middleware: the request's id in `scope["state"]["request_id"]` and on the answer's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode())]}
            await send(message)

        await self.app(scope, receive, tagged_send)
