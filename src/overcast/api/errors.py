"""The one table from error kind to HTTP status and ``X-Elastic-Error``,
and the one place that turns exceptions into responses.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overcast.api.requestid import current_request_id
from overcast.model.errors import Kind, OvercastError

__all__ = ["STATUS", "UnexpectedErrors", "error_response", "handle_error", "handle_http"]

log = logging.getLogger(__name__)

STATUS: dict[Kind, int] = {
    Kind.USAGE: 400,
    Kind.AUTH: 401,
    Kind.BILLING: 402,
    Kind.MISSING: 404,
    Kind.METHOD: 405,
    Kind.BUSY: 409,
    Kind.FAILED: 500,
    Kind.SYSTEM: 500,
    Kind.FULL: 507,
}


def error_response(kind: Kind, message: str) -> Response:
    headers = {"X-Elastic-Error": kind.value}
    if kind is Kind.AUTH:
        headers["WWW-Authenticate"] = 'Basic realm="overcast"'
    return PlainTextResponse(message.rstrip("\n") + "\n", STATUS[kind], headers=headers)


async def handle_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OvercastError)
    if exc.kind in (Kind.SYSTEM, Kind.FAILED):
        log.error("%s: %s", exc.kind.value, exc.message)
    return error_response(exc.kind, exc.message)


async def handle_http(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such path, wrong method) in our terms."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(Kind.METHOD, f"{request.url.path} needs POST")
    if exc.status_code == 404:
        return error_response(Kind.MISSING, f"no such command {request.url.path}")
    return error_response(Kind.USAGE, str(exc.detail))


class UnexpectedErrors:
    """Turns a bug's exception into ``500 system`` with the request id.

    A middleware inside :class:`RequestIdMiddleware` rather than Starlette's
    ``Exception`` handler: that one runs outermost, after the request id is
    gone, and re-raises, which drops the client's keep-alive connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            rid = current_request_id()
            log.exception("internal error in request %s", rid)
            if started:
                raise
            response = error_response(Kind.SYSTEM, f"internal error; request id {rid}")
            await response(scope, receive, send)
