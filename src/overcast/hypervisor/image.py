"""Drive images on disk: creation and resizing with ``qemu-img``, and
streaming copies (imaging, reads and writes at offsets).

Everything here streams in fixed-size chunks so that a drive is never held
in memory whole; blocking file I/O runs in worker threads. Images are raw
and sparse: copies and writes skip runs of zeros that would land on a hole
anyway, and copies skip the source's holes (``SEEK_DATA``), so a mostly
empty drive costs little disk and time.

An imaging copy is built beside its destination (``UUID.imaging``) and
renamed over it only once complete and on disk: a copy that fails or is
interrupted leaves the destination exactly as it was.

Errors: a bad gzip stream or a source too large for its destination is a
:class:`UsageError` (the user's data is at fault); a full disk is
:class:`FullError`; any other I/O failure is :class:`FailedError`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from overcast.model.errors import FailedError, FullError, UsageError

__all__ = [
    "CHUNK",
    "CopyStopped",
    "GzipStream",
    "copy_image",
    "create_image",
    "gunzipped_size",
    "is_gzip",
    "read_range",
    "remove_image",
    "resize_image",
    "staging_path",
    "write_stream",
]

CHUNK = 1 << 20
_ZERO = bytes(CHUNK)
_GZIP_MAGIC = b"\x1f\x8b"
#: zlib's window-bits value for "a gzip header and trailer".
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class CopyStopped(Exception):
    """:func:`copy_image` was asked to stop (shutdown); nothing was changed."""


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
    # qemu-img rounds a raw image up to whole 512-byte sectors. The drive is
    # the size the user asked for (ElasticHosts kept e.g. 10000000 bytes), so
    # the file is too: what info shows is what read and write honour.
    await asyncio.to_thread(_truncate_to, path, size)


def _truncate_to(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        os.truncate(path, size)


async def resize_image(path: Path, size: int) -> None:
    await _qemu_img("resize", "-q", "-f", "raw", "--shrink", str(path), str(size))


def staging_path(path: Path) -> Path:
    """Where an imaging copy onto ``path`` is built."""
    return path.with_name(path.name + ".imaging")


def remove_image(path: Path) -> None:
    path.unlink(missing_ok=True)
    staging_path(path).unlink(missing_ok=True)


def is_gzip(path: Path) -> bool:
    """Whether the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _os_error(err: OSError, what: str) -> Exception:
    """Our error for an I/O failure: a full disk is ``full``, the rest ``failed``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return FullError(f"{what}: no space left on the drive store")
    return FailedError(f"{what}: {err.strerror or err}")


def _is_zero(data: bytes) -> bool:
    return data == _ZERO[: len(data)]


def _is_hole(fd: int, start: int, end: int) -> bool:
    """Whether ``[start, end)`` of the file holds no data (reads as zeros)."""
    try:
        return os.lseek(fd, start, os.SEEK_DATA) >= end
    except OSError as err:
        # ENXIO: no data at or after ``start``. Anything else (no SEEK_DATA
        # support): assume data, which only costs a write.
        return err.errno == errno.ENXIO


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the parts of a file that may hold data; holes skipped."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno != errno.ENXIO:
                yield pos, size  # no SEEK_DATA here: copy the rest as data
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


class GzipStream:
    """Decompresses gzip data chunk by chunk, in pieces of at most :data:`CHUNK`.

    A gzip file is a series of members (``cat a.gz b.gz`` is valid), so a
    member's end may be followed by another. What follows the last member
    is an error for an upload (``trailing=False``), but not for a gzip image
    kept on a drive, whose file goes on with whatever the drive held before
    (usually zeros): with ``trailing=True`` the stream just ends there and
    :attr:`ended` becomes true.
    """

    def __init__(self, *, trailing: bool = False) -> None:
        self._trailing = trailing
        self._z: zlib._Decompress | None = zlib.decompressobj(_GZIP_WBITS)
        self._after = b""  # bytes after a member's end, too few to judge yet
        self._members = 0
        self.ended = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the data decompressed from ``data``.

        Bounded pieces keep a highly compressed body from growing memory.
        """
        while data and not self.ended:
            if self._z is None:
                data = self._after + data
                self._after = b""
                if len(data) < len(_GZIP_MAGIC):
                    self._after = data
                    return
                if not data.startswith(_GZIP_MAGIC):
                    if self._trailing:
                        self.ended = True
                        return
                    raise UsageError("data after the end of the gzip stream")
                self._z = zlib.decompressobj(_GZIP_WBITS)
            z = self._z
            try:
                out = z.decompress(data, CHUNK)
                while True:
                    if out:
                        yield out
                    if z.eof:
                        break
                    if z.unconsumed_tail:
                        out = z.decompress(z.unconsumed_tail, CHUNK)
                    elif len(out) == CHUNK:
                        # The output filled up: zlib may hold more for this
                        # input even though it consumed all of it.
                        out = z.decompress(b"", CHUNK)
                    else:
                        break
            except zlib.error as err:
                raise UsageError(f"not valid gzip data: {err}") from err
            if z.eof:
                data = z.unused_data
                self._z = None
                self._members += 1
            else:
                data = b""

    def finish(self) -> None:
        """Check that the data ended at the end of a member."""
        if self.ended:
            return
        if self._z is not None or not self._members:
            raise UsageError("gzip data is truncated")
        if self._after and not self._trailing:
            raise UsageError("data after the end of the gzip stream")


def gunzipped_size(path: Path) -> int:
    """The size of a gzip file's content, by decompressing it (blocking)."""
    stream = GzipStream()
    total = 0
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            for piece in stream.feed(data):
                total += len(piece)
    stream.finish()
    return total


def copy_image(
    source: Path,
    dest: Path,
    *,
    gunzip: bool,
    limit: int,
    progress: Callable[[float], None],
    stop: threading.Event,
) -> int:
    """Replace ``dest`` with a copy of ``source`` (decompressed if ``gunzip``).

    Blocking; run it in a thread. The copy is ``limit`` bytes long (the
    destination drive's size), zero-filled past the source's end; a longer
    source raises :class:`UsageError`. ``progress`` gets the fraction of the
    source consumed; setting ``stop`` makes the copy raise
    :class:`CopyStopped` soon. On any failure ``dest`` is left untouched.
    Returns the number of bytes the source expanded to.
    """
    staging = staging_path(dest)
    try:
        with open(source, "rb") as src, open(staging, "wb") as out:
            out.truncate(limit)
            copy = _copy_gunzip if gunzip else _copy_raw
            copied = copy(src.fileno(), out.fileno(), limit, progress, stop)
            os.fsync(out.fileno())
        os.replace(staging, dest)
        _fsync_dir(dest.parent)
    except BaseException as err:
        staging.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _os_error(err, "imaging failed") from err
        raise
    return copied


def _copy_raw(
    src: int, out: int, limit: int, progress: Callable[[float], None], stop: threading.Event
) -> int:
    size = os.fstat(src).st_size
    if size > limit:
        raise UsageError(f"source ({size} bytes) is larger than the destination ({limit} bytes)")
    for start, end in _data_extents(src, size):
        pos = start
        while pos < end:
            if stop.is_set():
                raise CopyStopped
            chunk = os.pread(src, min(CHUNK, end - pos), pos)
            if not chunk:
                return size
            if not _is_zero(chunk):
                _pwrite_all(out, chunk, pos)
            pos += len(chunk)
            progress(pos / size)
    return size


def _copy_gunzip(
    src: int, out: int, limit: int, progress: Callable[[float], None], stop: threading.Event
) -> int:
    total = max(os.fstat(src).st_size, 1)
    stream = GzipStream(trailing=True)
    offset = consumed = 0
    while not stream.ended and (data := os.pread(src, CHUNK, consumed)):
        consumed += len(data)
        for piece in stream.feed(data):
            if stop.is_set():
                raise CopyStopped
            if offset + len(piece) > limit:
                raise UsageError(f"the gzip source expands past the destination's {limit} bytes")
            if not _is_zero(piece):
                _pwrite_all(out, piece, offset)
            offset += len(piece)
        progress(consumed / total)
    stream.finish()
    return offset


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def read_range(path: Path, offset: int, size: int) -> AsyncIterator[bytes]:
    """Yield exactly ``size`` bytes of ``path`` from ``offset``, in chunks.

    Past the file's end (a shrink raced the read) the drive reads as zeros,
    so the reply keeps the length it announced.
    """
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        end = offset + size
        while offset < end:
            want = min(CHUNK, end - offset)
            chunk = await asyncio.to_thread(os.pread, fd, want, offset)
            if len(chunk) < want:
                chunk += bytes(want - len(chunk))
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    # Zeros over a hole would only allocate disk for nothing.
    if _is_zero(data) and _is_hole(fd, offset, offset + len(data)):
        return
    _pwrite_all(fd, data, offset)


async def write_stream(path: Path, offset: int, limit: int, chunks: AsyncIterator[bytes]) -> int:
    """Write ``chunks`` at ``offset``; refuse to pass ``limit``. Returns bytes written.

    Data is on disk when this returns. A stream that passes ``limit`` raises
    :class:`UsageError`; what came before it has been written.
    """
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY)
    written = 0
    pending = bytearray()
    try:
        async for chunk in chunks:
            if offset + written + len(pending) + len(chunk) > limit:
                raise UsageError(f"write passes the end of the drive ({limit} bytes)")
            pending += chunk
            # Whole chunks, so that each can be recognised as zeros.
            while len(pending) >= CHUNK:
                data = bytes(pending[:CHUNK])
                del pending[:CHUNK]
                await asyncio.to_thread(_write_at, fd, data, offset + written)
                written += len(data)
        if pending:
            await asyncio.to_thread(_write_at, fd, bytes(pending), offset + written)
            written += len(pending)
        await asyncio.to_thread(os.fdatasync, fd)
    except OSError as err:
        raise _os_error(err, "write failed") from err
    finally:
        os.close(fd)
    return written
