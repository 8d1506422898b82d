"""Content negotiation: request bodies in, replies out.

Input and output are chosen independently: ``Content-Type:
application/json`` means a JSON body, anything else is text;
``Accept: application/json`` means a JSON reply, anything else text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from overcast.model.codec import (
    Keys,
    Record,
    decode_json,
    decode_text,
    encode_json,
    encode_json_list,
    encode_text,
    encode_text_list,
)
from overcast.model.errors import UsageError

T = TypeVar("T")

__all__ = [
    "MAX_BODY",
    "no_content",
    "read_keys",
    "reply",
    "reply_list",
    "reply_many",
    "wants_json",
]

#: Largest key/value body we read (drive data goes through streaming calls).
MAX_BODY = 1 << 20
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


def wants_json(request: Request) -> bool:
    """Media types are case-insensitive (RFC 9110), so the match is too."""
    return _JSON in request.headers.get("accept", "").lower()


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == _JSON


async def read_keys(request: Request) -> Keys:
    """The request's keys, decoded as its ``Content-Type`` says.

    A body over :data:`MAX_BODY` is refused as soon as that is known: from
    ``Content-Length`` before reading, else (chunked) once that much came.
    """
    too_large = UsageError(f"request body is larger than {MAX_BODY} bytes")
    length = request.headers.get("content-length", "")
    if length.isdecimal() and (len(length) > 18 or int(length) > MAX_BODY):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise too_large
    if _is_json(request):
        return decode_json(bytes(body))
    return decode_text(bytes(body))


def reply(request: Request, records: Record | Sequence[Record]) -> Response:
    if wants_json(request):
        return Response(encode_json(records), media_type=_JSON)
    return Response(encode_text(records), media_type=_TEXT)


#: Lists longer than this are rendered in a worker thread.
_BIG = 200


async def reply_many(
    request: Request, items: Sequence[T], render: Callable[[T], Record]
) -> Response:
    """Render a list of objects; a long one off the event loop so that one
    user's 10,000 drives do not stall everyone else's requests."""

    def work() -> Response:
        return reply(request, [render(item) for item in items])

    return await asyncio.to_thread(work) if len(items) > _BIG else work()


def reply_list(request: Request, field: str, values: Sequence[str]) -> Response:
    if wants_json(request):
        return Response(encode_json_list(field, values), media_type=_JSON)
    return Response(encode_text_list(values), media_type=_TEXT)


def no_content() -> Response:
    return Response(status_code=204)
