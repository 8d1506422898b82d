"""One id per request: in a response header, in every log line, in 500s.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which costs a task and
a stream copy per request) keeps the id in a context variable.
"""

from __future__ import annotations

import contextvars
import logging
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdFilter", "RequestIdMiddleware", "current_request_id"]

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def current_request_id() -> str:
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = secrets.token_hex(8)
        token = _request_id.set(rid)
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
