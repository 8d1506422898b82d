"""``/drives/…`` routes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from overcast.api.auth import caller
from overcast.api.context import CHANGE, READ, cloud_of
from overcast.api.negotiate import no_content, read_keys, reply, reply_list, reply_many
from overcast.hypervisor.image import GzipStream
from overcast.model.drive import drive_info, parse_drive_changes, parse_drive_spec
from overcast.model.errors import UsageError
from overcast.model.keys import parse_size

__all__ = ["routes"]


def _offset(key: str, value: str) -> int:
    """A byte offset: like a size (suffixes allowed) but zero is fine."""
    return 0 if re.fullmatch(r"0+[kKMGT]?", value) else parse_size(key, value)


async def list_drives(request: Request) -> Response:
    user = await caller(request)
    drives = await cloud_of(request).drives.of_user(user)
    return reply_list(request, "drive", [d.uuid for d in drives])


async def info_all(request: Request) -> Response:
    user = await caller(request)
    return await reply_many(request, await cloud_of(request).drives.of_user(user), drive_info)


async def list_standard(request: Request) -> Response:
    await caller(request)
    drives = await cloud_of(request).drives.list_standard()
    return reply_list(request, "drive", [d.uuid for d in drives])


async def info_standard(request: Request) -> Response:
    await caller(request)
    return await reply_many(request, await cloud_of(request).drives.list_standard(), drive_info)


async def info(request: Request) -> Response:
    user = await caller(request)
    drive = await cloud_of(request).drives.readable(user, request.path_params["drive"])
    return reply(request, drive_info(drive))


async def create(request: Request) -> Response:
    user = await caller(request)
    spec = parse_drive_spec(await read_keys(request))
    return reply(request, drive_info(await cloud_of(request).drives.create(user, spec)))


async def set_(request: Request) -> Response:
    user = await caller(request)
    changes = parse_drive_changes(await read_keys(request))
    drive = await cloud_of(request).drives.set(user, request.path_params["drive"], changes)
    return reply(request, drive_info(drive))


async def destroy(request: Request) -> Response:
    user = await caller(request)
    await cloud_of(request).drives.destroy(user, request.path_params["drive"])
    return no_content()


async def image(request: Request) -> Response:
    user = await caller(request)
    gunzip = request.url.path.endswith("/gunzip")
    params = request.path_params
    await cloud_of(request).drives.image(user, params["drive"], params["source"], gunzip=gunzip)
    return no_content()


async def read(request: Request) -> Response:
    user = await caller(request)
    offset = _offset("offset", request.path_params["offset"])
    size = parse_size("size", request.path_params["size"])
    drives = cloud_of(request).drives
    length, chunks = await drives.read(user, request.path_params["drive"], offset, size)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(length)},
    )


async def write(request: Request) -> Response:
    """Raw bytes, or gzip with ``Content-Encoding: gzip``.

    A plain body's length is checked against the drive before anything is
    written; a gzip body's only as it expands.
    """
    user = await caller(request)
    offset = _offset("offset", request.path_params.get("offset", "0"))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UsageError(f"unsupported Content-Encoding {encoding[:40]!r} (gzip or none)")
    body: AsyncIterator[bytes] = request.stream()
    length = None
    if encoding == "gzip":
        body = _gunzip(body)
    else:
        length = _content_length(request)
    drive = request.path_params["drive"]
    await cloud_of(request).drives.write(user, drive, offset, body, length=length)
    return no_content()


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise UsageError(f"malformed Content-Length {value[:40]!r}")
    return int(value)


async def _gunzip(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    stream = GzipStream()
    async for chunk in body:
        for piece in stream.feed(chunk):
            yield piece
    stream.finish()


routes = [
    Route("/drives/list", list_drives, methods=READ),
    Route("/drives/info", info_all, methods=READ),
    Route("/drives/list/standard", list_standard, methods=READ),
    Route("/drives/info/standard", info_standard, methods=READ),
    Route("/drives/create", create, methods=CHANGE),
    Route("/drives/{drive}/info", info, methods=READ),
    Route("/drives/{drive}/set", set_, methods=CHANGE),
    Route("/drives/{drive}/destroy", destroy, methods=CHANGE),
    Route("/drives/{drive}/image/{source}", image, methods=CHANGE),
    Route("/drives/{drive}/image/{source}/gunzip", image, methods=CHANGE),
    Route("/drives/{drive}/read/{offset}/{size}", read, methods=READ),
    Route("/drives/{drive}/write", write, methods=CHANGE),
    Route("/drives/{drive}/write/{offset}", write, methods=CHANGE),
]
