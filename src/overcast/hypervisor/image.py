"""Drive images on disk: creation and resizing with ``qemu-img``, and
streaming copies (imaging, reads and writes at offsets).

Everything here streams in fixed-size chunks so that a drive is never held
in memory whole; blocking file I/O runs in worker threads. Images are raw
and sparse: a copy first empties its destination and then skips runs of
zeros, so imaging a mostly empty drive costs little disk and time.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from overcast.model.errors import FailedError, UsageError

__all__ = [
    "CHUNK",
    "GzipStream",
    "copy_image",
    "create_image",
    "read_range",
    "remove_image",
    "resize_image",
    "write_stream",
]

CHUNK = 1 << 20
_ZERO = bytes(CHUNK)


async def _qemu_img(*args: str) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as err:
        raise FailedError("qemu-img is not installed") from err
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        raise FailedError(f"qemu-img {args[0]} failed: {message}")


async def create_image(path: Path, size: int) -> None:
    await _qemu_img("create", "-q", "-f", "raw", str(path), str(size))


async def resize_image(path: Path, size: int) -> None:
    await _qemu_img("resize", "-q", "-f", "raw", "--shrink", str(path), str(size))


def remove_image(path: Path) -> None:
    path.unlink(missing_ok=True)


def copy_image(
    source: Path,
    dest: Path,
    *,
    gunzip: bool,
    limit: int,
    progress: Callable[[float], None],
) -> int:
    """Copy ``source`` (decompressing it if ``gunzip``) over ``dest``.

    Blocking; run it in a thread. At most ``limit`` bytes are written (the
    destination's size): a longer source raises :class:`UsageError` after
    the destination has been filled. ``progress`` gets the fraction of the
    source consumed. Returns the bytes the source expanded to.
    """
    total = max(source.stat().st_size, 1)
    with open(source, "rb") as raw, open(dest, "r+b") as out:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gunzip else raw
        # Empty the destination first so that skipped zero chunks read as zeros.
        out.truncate(0)
        out.truncate(limit)
        offset = 0
        try:
            while chunk := stream.read(CHUNK):
                if offset + len(chunk) > limit:
                    raise UsageError(f"source is larger than the destination drive ({limit} bytes)")
                if chunk != _ZERO[: len(chunk)]:
                    os.pwrite(out.fileno(), chunk, offset)
                offset += len(chunk)
                progress(raw.tell() / total)
        except (OSError, EOFError, zlib.error) as err:
            if isinstance(err, gzip.BadGzipFile | EOFError | zlib.error):
                raise UsageError(f"source is not valid gzip data: {err}") from err
            raise FailedError(f"imaging failed: {err}") from err
        out.flush()
        os.fsync(out.fileno())
    return offset


async def read_range(path: Path, offset: int, size: int) -> AsyncIterator[bytes]:
    """Yield ``size`` bytes of ``path`` from ``offset`` in chunks."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        end = offset + size
        while offset < end:
            chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


class GzipStream:
    """Decompresses a gzip body chunk by chunk; refuses bad or trailing data."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the decompressed data in pieces of at most :data:`CHUNK`.

        Bounded pieces keep a highly compressed body from growing memory.
        """
        if self._z.eof:
            if data:
                raise UsageError("data after the end of the gzip stream")
            return
        try:
            out = self._z.decompress(data, CHUNK)
            yield out
            while self._z.unconsumed_tail:
                yield self._z.decompress(self._z.unconsumed_tail, CHUNK)
        except zlib.error as err:
            raise UsageError(f"body is not valid gzip data: {err}") from err
        if self._z.eof and self._z.unused_data:
            raise UsageError("data after the end of the gzip stream")

    def finish(self) -> None:
        if not self._z.eof:
            raise UsageError("gzip body is truncated")


async def write_stream(path: Path, offset: int, limit: int, chunks: AsyncIterator[bytes]) -> int:
    """Write ``chunks`` at ``offset``; refuse to pass ``limit``. Returns bytes written."""
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY)
    written = 0
    pending = bytearray()
    try:
        async for chunk in chunks:
            if offset + written + len(pending) + len(chunk) > limit:
                raise UsageError(f"write passes the end of the drive ({limit} bytes)")
            pending += chunk
            if len(pending) >= CHUNK:
                data = bytes(pending)
                pending.clear()
                await asyncio.to_thread(os.pwrite, fd, data, offset + written)
                written += len(data)
        if pending:
            await asyncio.to_thread(os.pwrite, fd, bytes(pending), offset + written)
            written += len(pending)
    finally:
        os.close(fd)
    return written
