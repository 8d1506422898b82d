"""HTTP for the OCCI routes: which rendering comes in and goes out, bodies,
replies, and the OCCI status of each error.

Errors are the same :class:`OvercastError` kinds as everywhere, with the same
plain-text message and ``X-Elastic-Error`` (``api.errors.error_response``);
only the status differs where GFD.223's list of codes says otherwise: over
quota is ``403 Forbidden`` (ElasticHosts: 402) and no room left is ``503
Service Unavailable`` (ElasticHosts: 507). The codes the ElasticHosts API
never gives (406, 413, 415, 501, a 405 with ``Allow``) are
:class:`Refused` errors that carry their status.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import ClassVar

from starlette.requests import Request
from starlette.responses import Response

from overcast.api.errors import STATUS, error_response
from overcast.api.occi.mapping import Site
from overcast.api.occi.render import Format, Rendered, format_of, negotiate
from overcast.model.errors import Kind, OvercastError, UsageError

__all__ = [
    "MAX_BODY",
    "OCCI_STATUS",
    "Endpoint",
    "Forbidden",
    "NotAcceptable",
    "NotAllowed",
    "NotSupported",
    "Refused",
    "TooLarge",
    "UnsupportedMediaType",
    "answer_format",
    "body_format",
    "empty",
    "occi_endpoint",
    "read_body",
    "reply",
    "site_of",
]

log = logging.getLogger(__name__)

#: GFD.223 §"Status Codes" where it differs from the ElasticHosts table.
OCCI_STATUS: dict[Kind, int] = {**STATUS, Kind.BILLING: 403, Kind.FULL: 503}
#: Largest rendering read (an entity with its links is a few kB).
MAX_BODY = 1 << 20
_FORMATS = "text/plain, text/occi, application/occi+json, application/json"
#: ``OCCI/X.Y`` in a client's User-Agent (GFD.223 §"Versioning").
_VERSION = re.compile(r"\bOCCI/([0-9]{1,4})\.([0-9]{1,4})\b")
_SUPPORTED = (1, 2)
_OCCI_HEADERS = frozenset(
    {"category", "x-occi-category", "x-occi-attribute", "link", "x-occi-link"}
)

Endpoint = Callable[[Request], Awaitable[Response]]


class Refused(UsageError):
    """A client error with a status of its own."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class NotAcceptable(Refused):
    status = 406


class UnsupportedMediaType(Refused):
    status = 415


class TooLarge(Refused):
    status = 413


class NotSupported(Refused):
    """A request OCCI defines and overcast does not implement (501)."""

    status = 501


class Forbidden(Refused):
    status = 403


class NotAllowed(Refused):
    """405, with the methods the target does answer."""

    status = 405

    def __init__(self, message: str, allow: Sequence[str]) -> None:
        super().__init__(message, {"Allow": ", ".join(allow)})


def site_of(request: Request) -> Site:
    return Site(str(request.base_url).rstrip("/"))


def answer_format(request: Request) -> tuple[Format, str]:
    """The rendering to answer in and the exact media type to name it."""
    accept = request.headers.get("accept")
    found = negotiate(accept)
    if found is None:
        shown = (accept or "")[:80]
        raise NotAcceptable(f"Accept {shown!r}: overcast renders OCCI as {_FORMATS}")
    return found


def body_format(request: Request) -> Format:
    """The rendering of the request: its ``Content-Type``; without one,
    ``text/occi`` if OCCI fields came as headers, else ``text/plain``."""
    content_type = request.headers.get("content-type")
    if content_type:
        fmt = format_of(content_type)
        if fmt is None:
            raise UnsupportedMediaType(
                f"Content-Type {content_type[:80]!r} is not an OCCI rendering ({_FORMATS})"
            )
        return fmt
    if any(name.lower() in _OCCI_HEADERS for name in request.headers):
        return Format.TEXT_OCCI
    return Format.TEXT_PLAIN


async def read_body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdecimal() and (len(length) > 18 or int(length) > MAX_BODY):
        raise TooLarge(f"request body is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"request body is larger than {MAX_BODY} bytes")
    return bytes(body)


def reply(
    rendered: Rendered,
    media: str,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """``media`` exactly as the client asked for it (no charset added)."""
    out = {name: value for name, value in rendered.headers}
    out.update(headers or {})
    out["Content-Type"] = media
    out["Accept"] = _FORMATS
    return Response(rendered.body, status_code=status, headers=out)


def empty(fmt: Format) -> Rendered:
    """A body for answers with nothing to render (``DELETE``)."""
    body = {Format.TEXT_PLAIN: b"", Format.TEXT_OCCI: b"OK", Format.JSON: b"{}"}[fmt]
    return Rendered(body, fmt.value)


def _check_version(request: Request) -> None:
    agent = request.headers.get("user-agent", "")
    match = _VERSION.search(agent)
    if match is not None and (int(match.group(1)), int(match.group(2))) > _SUPPORTED:
        raise NotSupported(
            f"this server speaks OCCI/1.2, not OCCI/{match.group(1)}.{match.group(2)}"
        )


def _error(exc: OvercastError) -> Response:
    if exc.kind in (Kind.SYSTEM, Kind.FAILED):
        log.error("%s: %s", exc.kind.value, exc.message)
    response = error_response(exc.kind, exc.message)
    if isinstance(exc, Refused):
        response.status_code = exc.status
        response.headers.update(exc.headers)
    else:
        response.status_code = OCCI_STATUS[exc.kind]
    return response


def occi_endpoint(endpoint: Endpoint) -> Endpoint:
    """Errors as OCCI statuses; a client newer than OCCI/1.2 gets 501."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            _check_version(request)
            return await endpoint(request)
        except OvercastError as exc:
            return _error(exc)

    return wrapped
