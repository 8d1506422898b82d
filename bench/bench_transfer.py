"""Drive data throughput: upload (``POST /drives/D/write``), gzip upload and
download (``GET /drives/D/read/0/SIZE``) of a 1 GiB drive with httpx, side
by side with ``cp`` and ``cat`` of a file of the same size on the same disk
in the same run.

A write call answers only once its data is on disk (it ends with
``fdatasync``), so uploads are compared with ``cp`` followed by an fsync of
the copy; plain ``cp`` (page cache only) is shown too. Reads come from the
page cache on both sides. ``os.sync()`` runs before each timed step so that
no step pays for the previous one's write-back. The client shares the
machine's two cores with the server, so the HTTP figures include the
client's cost (curl, a cheaper client, is shown for downloads when
installed); the ratios say how close the HTTP path gets to a file copy.

The server's peak resident memory (``VmHWM``) is read before and after:
streaming must keep it flat whatever the drive size.

Run: ``.venv/bin/python bench/bench_transfer.py [--small]``.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _common import overcast_server, peak_rss_kib, populate

__all__ = ["Figures", "main", "run"]

CHUNK = 1 << 20
MB = 1e6


@dataclass
class Figures:
    size: int
    seconds: dict[str, float] = field(default_factory=dict)
    rss_kib: dict[str, int] = field(default_factory=dict)
    gzip_bytes: int = 0

    def mb_s(self, step: str) -> float:
        return self.size / self.seconds[step] / MB


def _blocks(seed: int) -> tuple[bytes, bytes]:
    """A random 1 MiB block (incompressible) and a compressible one (4 bits a byte).

    Neither holds runs of zeros, so no layer can skip them as holes.
    """
    raw = random.Random(seed).randbytes(CHUNK)
    table = bytes(0x41 + (b & 0x0F) for b in range(256))
    return raw, raw.translate(table)


def _repeat(block: bytes, size: int) -> Iterator[bytes]:
    for _ in range(size // len(block)):
        yield block


def _gzip_body(block: bytes, size: int) -> tuple[Callable[[], Iterator[bytes]], int]:
    """A gzip stream of ``block`` repeated to ``size`` bytes, without compressing it all.

    After ``Z_FULL_FLUSH`` deflate forgets its history, so each further
    block compresses to the same bytes: compress three, check that the last
    two agree, and repeat that piece. Returns (a body factory, body length).
    """
    count = size // len(block)
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    middle = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    if z.compress(block) + z.flush(zlib.Z_FULL_FLUSH) != middle:
        raise RuntimeError("deflate is not repeatable after a full flush here")
    end = z.flush(zlib.Z_FINISH)  # the empty final block
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = end + struct.pack("<II", crc, size & 0xFFFFFFFF)

    def body() -> Iterator[bytes]:
        yield header + first
        for _ in range(count - 1):
            yield middle
        yield trailer

    length = len(header) + len(first) + (count - 1) * len(middle) + len(trailer)
    return body, length


def _timed(figures: Figures, step: str, action: Callable[[], None]) -> None:
    os.sync()
    started = time.perf_counter()
    action()
    figures.seconds[step] = time.perf_counter() - started


def run(size: int = 1 << 30) -> Figures:
    """Every measurement for one drive of ``size`` bytes (a multiple of 1 MiB)."""
    raw, compressible = _blocks(seed=1)
    gzip_body, gzip_length = _gzip_body(compressible, size)
    figures = Figures(size, gzip_bytes=gzip_length)
    with tempfile.TemporaryDirectory(prefix="overcast-bench-") as tmp:
        data = Path(tmp) / "var"
        (user,) = populate(data, [0])
        source = Path(tmp) / "source.img"
        with open(source, "wb") as f:
            for block in _repeat(raw, size):
                f.write(block)
        with (
            overcast_server(data) as oc,
            httpx.Client(base_url=oc.url, auth=(user.uuid, user.secret), timeout=300) as client,
        ):
            # Two fresh drives, so both uploads fill new pages as cp does.
            plain, gzipped = (_create(client, name, size) for name in ("plain", "gzipped"))
            figures.rss_kib["after start"] = peak_rss_kib(oc.pid)

            def cp() -> None:
                subprocess.run(["cp", source, Path(tmp) / "copy.img"], check=True)

            def cp_fsync() -> None:
                copy = Path(tmp) / "copy-synced.img"
                subprocess.run(["cp", source, copy], check=True)
                fd = os.open(copy, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

            def cat() -> None:
                with open(os.devnull, "wb") as null:
                    subprocess.run(["cat", source], stdout=null, check=True)

            def upload() -> None:
                r = client.post(f"/drives/{plain}/write", content=_repeat(raw, size))
                _expect(r, 204)

            def gzip_upload() -> None:
                headers = {"Content-Encoding": "gzip"}
                r = client.post(f"/drives/{gzipped}/write", content=gzip_body(), headers=headers)
                _expect(r, 204)

            def download() -> None:
                got = 0
                with client.stream("GET", f"/drives/{plain}/read/0/{size}") as r:
                    _expect(r, 200)
                    # Chunks as they arrive: re-chunking (iter_raw(n)) costs
                    # the client a copy of every byte.
                    for chunk in r.iter_raw():
                        got += len(chunk)
                if got != size:
                    raise RuntimeError(f"read {got} bytes of {size}")

            def curl_download() -> None:
                url = f"{oc.url}/drives/{plain}/read/0/{size}"
                cmd = ["curl", "-sSf", "-o", os.devnull, "-u", f"{user.uuid}:{user.secret}", url]
                subprocess.run(cmd, check=True)

            _timed(figures, "cp", cp)
            _timed(figures, "cp+fsync", cp_fsync)
            _timed(figures, "upload", upload)
            figures.rss_kib["after upload"] = peak_rss_kib(oc.pid)
            _timed(figures, "gzip upload", gzip_upload)
            figures.rss_kib["after gzip upload"] = peak_rss_kib(oc.pid)
            _timed(figures, "cat", cat)
            _timed(figures, "download", download)
            if shutil.which("curl"):
                _timed(figures, "curl download", curl_download)
            figures.rss_kib["after downloads"] = peak_rss_kib(oc.pid)
            _check_drive(client, plain, size, raw)
            _check_drive(client, gzipped, size, compressible)
    return figures


def _create(client: httpx.Client, name: str, size: int) -> str:
    r = client.post("/drives/create", content=f"name {name}\nsize {size}\n")
    _expect(r, 200)
    return dict(line.split(" ", 1) for line in r.text.splitlines())["drive"]


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        r.read()
        raise RuntimeError(f"{r.request.method} {r.url.path}: {r.status_code} {r.text[:200]}")


def _check_drive(client: httpx.Client, drive: str, size: int, block: bytes) -> None:
    """The upload landed: the drive starts and ends with the block sent."""
    for offset in (0, size - len(block)):
        r = client.get(f"/drives/{drive}/read/{offset}/{len(block)}")
        _expect(r, 200)
        if r.content != block:
            raise RuntimeError(f"at {offset} the drive does not hold what the gzip upload sent")


def report(f: Figures) -> None:
    print(f"  size {f.size} bytes ({f.size / (1 << 20):.0f} MiB); MB/s = 10^6 bytes per second")
    print(f"  {'step':<34} {'seconds':>8} {'MB/s':>9} {'vs baseline':>12}")
    rows = [
        ("cp (page cache only)", "cp", None),
        ("cp + fsync (baseline for uploads)", "cp+fsync", None),
        ("POST /drives/D/write", "upload", "cp+fsync"),
        ("POST /drives/D/write, gzip", "gzip upload", "cp+fsync"),
        ("cat > /dev/null (baseline, reads)", "cat", None),
        ("GET /drives/D/read/0/SIZE", "download", "cat"),
        ("  the same, curl as the client", "curl download", "cat"),
    ]
    for label, step, base in rows:
        if step not in f.seconds:
            continue
        ratio = f"{f.mb_s(step) / f.mb_s(base):11.2f}x" if base else f"{'':>12}"
        print(f"  {label:<34} {f.seconds[step]:>8.2f} {f.mb_s(step):>9.0f} {ratio}")
    wire = f.gzip_bytes / f.seconds["gzip upload"] / MB
    print(
        f"  gzip body: {f.gzip_bytes} bytes ({f.gzip_bytes / f.size:.0%} of the data), "
        f"{wire:.0f} MB/s compressed on the wire; MB/s above counts decompressed bytes"
    )
    print(
        "  server peak RSS (VmHWM): "
        + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in f.rss_kib.items())
    )


def main(small: bool = False) -> Figures:
    print("bench_transfer: overcast serve (httpx client, same machine) vs cp/cat on the same disk")
    figures = run(size=16 << 20 if small else 1 << 30)
    report(figures)
    return figures


if __name__ == "__main__":
    main(small="--small" in sys.argv[1:])
