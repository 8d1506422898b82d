"""Drive data over HTTP: read and write at offsets, gzip uploads, imaging
(progress, busy destination, gunzip, failure, restart), and streaming in
bounded memory.

Big drives are made cheaply: gzip uploads of data that compresses well
(the server expands them), and sparse files where the test says so.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, new_user, start_cloud, stop_cloud
from overcast.hypervisor.image import CHUNK, GzipStream
from overcast.model.errors import UsageError

MiB = 1 << 20
PROGRESS = re.compile(r"[0-9]{1,2}%")


def text_record(body: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition(" ") for line in body.splitlines())}


def create(http: httpx.Client, size: str, name: str = "data", **more: str) -> str:
    keys = {"name": name, "size": size, **more}
    r = http.post("/drives/create", content="".join(f"{k} {v}\n" for k, v in keys.items()))
    assert r.status_code == 200, r.text
    return text_record(r.text)["drive"]


def info(http: httpx.Client, drive: str) -> dict[str, str]:
    r = http.get(f"/drives/{drive}/info")
    assert r.status_code == 200, r.text
    return text_record(r.text)


def write(http: httpx.Client, drive: str, data: bytes, offset: str | int | None = None) -> None:
    path = f"/drives/{drive}/write" + ("" if offset is None else f"/{offset}")
    r = http.post(path, content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text


def write_gzip(http: httpx.Client, drive: str, body: bytes, offset: int = 0) -> httpx.Response:
    return http.post(
        f"/drives/{drive}/write/{offset}",
        content=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
    )


def read(http: httpx.Client, drive: str, offset: int | str, size: int | str) -> bytes:
    r = http.get(f"/drives/{drive}/read/{offset}/{size}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["content-length"]) == len(r.content)
    return r.content


def read_hash(http: httpx.Client, drive: str, size: int, offset: int = 0) -> str:
    """SHA-256 of a range, streamed."""
    h = hashlib.sha256()
    with http.stream("GET", f"/drives/{drive}/read/{offset}/{size}") as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def assert_error(r: httpx.Response, status: int, kind: str, case: object = None) -> None:
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.headers["x-elastic-error"] == kind, case


def spread_data(mib: int, seed: int) -> tuple[bytes, str]:
    """``mib`` MiB with 4 KiB of random bytes in every MiB, as a gzip body of
    one member per MiB (cheap to make and to send), and the data's SHA-256.
    """
    rnd = random.Random(seed)
    members = []
    h = hashlib.sha256()
    for _ in range(mib):
        block = rnd.randbytes(4096) + bytes(MiB - 4096)
        h.update(block)
        members.append(gzip.compress(block, compresslevel=1))
    return b"".join(members), h.hexdigest()


def zeros_hash(size: int) -> str:
    h = hashlib.sha256()
    for _ in range(size // MiB):
        h.update(bytes(MiB))
    h.update(bytes(size % MiB))
    return h.hexdigest()


def wait_imaged(http: httpx.Client, drive: str, timeout: float = 60) -> list[str]:
    """Poll info until ``imaging`` is gone; returns every value seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while (value := info(http, drive).get("imaging")) is not None:
        seen.append(value)
        assert time.monotonic() < deadline, f"imaging stuck at {value}"
        time.sleep(0.01)
    return seen


# -- read and write --------------------------------------------------------------


def test_write_and_read_at_offsets(user: httpx.Client) -> None:
    d = create(user, "4M")
    model = bytearray(4 * MiB)

    def put(data: bytes, offset: int, path_offset: str | int | None = None) -> None:
        write(user, d, data, path_offset if path_offset is not None else offset)
        model[offset : offset + len(data)] = data

    first = os.urandom(1000)
    write(user, d, first)  # no offset: the start
    model[:1000] = first
    put(os.urandom(5000), 1024, "1k")
    put(os.urandom(3 * MiB // 2), 700_001)
    put(os.urandom(100), 4 * MiB - 100)  # up to the very end
    put(b"\0" * 4096, 1500)  # zeros overwrite data

    body = os.urandom(300_000)
    r = write_gzip(user, d, gzip.compress(body), offset=3 * MiB)
    assert r.status_code == 204, r.text
    model[3 * MiB : 3 * MiB + len(body)] = body

    assert read(user, d, 0, "4M") == model
    for offset, size in [(0, 1000), (1000, 1), (1023, 5002), (700_000, MiB), (3 * MiB, 300_000)]:
        assert read(user, d, offset, size) == model[offset : offset + size], (offset, size)
    assert read(user, d, "1k", "1k") == model[1024:2048]
    # A range past the end is cut at the end; at the end it is empty.
    assert read(user, d, 4 * MiB - 10, "1M") == model[-10:]
    assert read(user, d, "4M", 1) == b""
    # POST reads too (the official tool POSTs everything).
    assert user.post(f"/drives/{d}/read/0/16").content == model[:16]

    counters = info(user, d)
    assert int(counters["write:requests"]) == 6
    assert int(counters["write:bytes"]) == 1000 + 5000 + 3 * MiB // 2 + 100 + 4096 + 300_000
    assert int(counters["read:requests"]) == 9
    assert int(counters["read:bytes"]) > 4 * MiB


def test_gzip_upload_of_a_large_expansion(user: httpx.Client) -> None:
    d = create(user, "16M")
    data = bytes(range(256)) * (12 * MiB // 256)
    body = gzip.compress(data, 9)
    assert len(body) < MiB // 10
    assert write_gzip(user, d, body, offset=MiB).status_code == 204
    assert read_hash(user, d, len(data), offset=MiB) == hashlib.sha256(data).hexdigest()
    assert read(user, d, 0, MiB) == bytes(MiB)
    # Several gzip members, as ``cat a.gz b.gz`` makes, are one stream.
    two = gzip.compress(b"first ") + gzip.compress(b"second")
    assert write_gzip(user, d, two).status_code == 204
    assert read(user, d, 0, 12) == b"first second"


def test_write_past_the_end_is_400(user: httpx.Client) -> None:
    d = create(user, "64k")
    r = user.post(f"/drives/{d}/write/60k", content=os.urandom(4097))
    assert_error(r, 400, "usage")
    r = user.post(f"/drives/{d}/write", content=os.urandom(65537))
    assert_error(r, 400, "usage")
    # A plain body is checked before anything is written.
    assert read(user, d, 0, "64k") == bytes(65536)
    assert info(user, d)["write:bytes"] == "0"
    # A gzip body is checked as it expands.
    r = write_gzip(user, d, gzip.compress(bytes(70000) + b"x"))
    assert_error(r, 400, "usage")
    # Exactly up to the end is fine.
    write(user, d, b"e" * 4096, "60k")
    assert read(user, d, 61440, 4096) == b"e" * 4096


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"plainly not gzip", "gzip"),
        (gzip.compress(os.urandom(10000))[:-20], "gzip"),
        (gzip.compress(b"data") + b"trailing junk", "gzip"),
        (b"", "gzip"),
        (b"data", "br"),
    ],
    ids=["not-gzip", "truncated", "trailing", "empty", "unsupported"],
)
def test_bad_encoded_uploads_are_400(user: httpx.Client, body: bytes, encoding: str) -> None:
    d = create(user, "1M")
    r = user.post(f"/drives/{d}/write", content=body, headers={"Content-Encoding": encoding})
    assert_error(r, 400, "usage")


def test_a_drive_being_written_is_busy(cloud: Cloud, user: httpx.Client) -> None:
    """While a write streams in, the drive may not be imaged, resized or destroyed."""
    d = create(user, "4M")
    src = create(user, "1M", "source")
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"a" * MiB  # a whole chunk: the server writes it at once
        release.wait(20)
        yield b"b" * 65536

    replies: list[httpx.Response] = []

    def upload() -> None:
        with httpx.Client(base_url=cloud.url, auth=user.auth, timeout=30) as http:
            replies.append(http.post(f"/drives/{d}/write/1M", content=body()))

    writer = threading.Thread(target=upload)
    writer.start()
    try:
        # Once the first chunk is on the drive, the write is under way.
        deadline = time.monotonic() + 10
        while read(user, d, MiB, 16) != b"a" * 16:
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.01)
        assert_error(user.post(f"/drives/{d}/image/{src}"), 409, "busy", "image")
        assert_error(user.post(f"/drives/{d}/destroy"), 409, "busy", "destroy")
        assert_error(user.post(f"/drives/{d}/set", content=b"size 8M\n"), 409, "busy", "resize")
        # Other writes and reads go on.
        write(user, d, b"side", 0)
        assert read(user, d, 0, 4) == b"side"
    finally:
        release.set()
        writer.join()
    assert replies[0].status_code == 204, replies[0].text
    assert read(user, d, MiB, MiB + 65536) == b"a" * MiB + b"b" * 65536
    assert user.post(f"/drives/{d}/image/{src}").status_code == 204
    wait_imaged(user, d)


# -- imaging ------------------------------------------------------------------


def test_imaging_shows_progress_keeps_the_destination_busy_and_copies(
    cloud: Cloud, user: httpx.Client
) -> None:
    """256 MiB with data in every MiB: long enough to watch ``NN%``."""
    body, digest = spread_data(256, seed=1)
    src = create(user, "256M", "source")
    assert write_gzip(user, src, body).status_code == 204
    dest = create(user, "300M", "dest")
    write(user, dest, b"old data", 280 * MiB)
    other = create(user, "1M", "other")

    r = user.post(f"/drives/{dest}/image/{src}")
    assert r.status_code == 204 and r.content == b""
    first = info(user, dest).get("imaging")
    assert first == "queued" or PROGRESS.fullmatch(first or ""), first

    # Meanwhile the destination is busy for everything that changes its data.
    assert_error(user.post(f"/drives/{dest}/destroy"), 409, "busy", "destroy")
    assert_error(user.post(f"/drives/{dest}/write", content=b"x"), 409, "busy", "write")
    assert_error(user.post(f"/drives/{dest}/image/{other}"), 409, "busy", "image")
    assert_error(user.post(f"/drives/{dest}/set", content=b"size 1G\n"), 409, "busy", "resize")
    # ...the source may not go away or change size while it is read...
    assert_error(user.post(f"/drives/{src}/destroy"), 409, "busy", "source destroy")
    assert_error(user.post(f"/drives/{src}/set", content=b"size 1G\n"), 409, "busy", "src size")
    # ...and a drive being imaged is no source for another copy.
    assert_error(user.post(f"/drives/{other}/image/{dest}"), 409, "busy", "as source")
    # Its name and metadata may still change.
    r = user.post(f"/drives/{dest}/set", content=b"name renamed\n")
    assert r.status_code == 200 and text_record(r.text)["name"] == "renamed"

    seen = [first, *wait_imaged(user, dest)]
    assert any(PROGRESS.fullmatch(v or "") for v in seen), seen
    after = info(user, dest)
    assert "imaging" not in after and after["size"] == str(300 * MiB)

    assert read_hash(user, dest, 256 * MiB) == digest
    # The copy is the whole drive: past the source's end it reads as zeros.
    assert read_hash(user, dest, 44 * MiB, offset=256 * MiB) == zeros_hash(44 * MiB)
    assert not [f for f in os.listdir(cloud.data / "drives") if f.endswith(".imaging")]
    # Done: everything is allowed again.
    write(user, dest, b"new", 0)
    assert user.post(f"/drives/{src}/destroy").status_code == 204
    assert user.post(f"/drives/{dest}/destroy").status_code == 204


def test_imaging_from_a_gzip_drive(user: httpx.Client) -> None:
    content = os.urandom(100_000) + bytes(2 * MiB) + os.urandom(50_000)
    packed = gzip.compress(content)
    src = create(user, "8M", "gz")
    # The drive holds a gzip file followed by what the drive held before.
    write(user, src, packed)
    write(user, src, b"stale bytes after the gzip data", 6 * MiB)
    dest = create(user, "4M", "dest")
    write(user, dest, os.urandom(4 * MiB))

    assert user.post(f"/drives/{dest}/image/{src}/gunzip").status_code == 204
    wait_imaged(user, dest)
    assert read(user, dest, 0, len(content)) == content
    assert read(user, dest, len(content), "4M") == bytes(4 * MiB - len(content))

    # Without /gunzip the bytes are copied as they are.
    raw = create(user, "8M", "raw copy")
    assert user.post(f"/drives/{raw}/image/{src}").status_code == 204
    wait_imaged(user, raw)
    assert read(user, raw, 0, len(packed)) == packed


def test_gunzip_of_a_drive_without_gzip_is_400(user: httpx.Client) -> None:
    src = create(user, "1M", "plain")
    write(user, src, b"not gzip at all")
    dest = create(user, "1M", "dest")
    assert_error(user.post(f"/drives/{dest}/image/{src}/gunzip"), 400, "usage")
    assert "imaging" not in info(user, dest)


def test_image_from_a_larger_drive_is_400(user: httpx.Client) -> None:
    src = create(user, "2M", "big")
    dest = create(user, "1M", "small")
    assert_error(user.post(f"/drives/{dest}/image/{src}"), 400, "usage")
    assert "imaging" not in info(user, dest)


def test_failed_imaging_leaves_the_destination_as_it_was(user: httpx.Client) -> None:
    """A gzip source that expands past the destination fails in the background."""
    src = create(user, "1M", "bomb")
    write(user, src, gzip.compress(bytes(3 * MiB)))
    dest = create(user, "2M", "dest")
    before = os.urandom(2 * MiB)
    write(user, dest, before)
    assert user.post(f"/drives/{dest}/image/{src}/gunzip").status_code == 204
    wait_imaged(user, dest)
    assert read(user, dest, 0, "2M") == before


# -- GzipStream -----------------------------------------------------------------


def _gunzip(data: bytes, step: int, *, trailing: bool = False) -> bytes:
    stream = GzipStream(trailing=trailing)
    out = bytearray()
    for i in range(0, len(data), step):
        for piece in stream.feed(data[i : i + step]):
            assert len(piece) <= CHUNK
            out += piece
    stream.finish()
    return bytes(out)


def test_gzip_stream_in_any_split() -> None:
    rnd = random.Random(7)
    content = (rnd.randbytes(333) * 20000)[: 3 * CHUNK + 17] + rnd.randbytes(5000)
    packed = gzip.compress(content[:CHUNK]) + gzip.compress(content[CHUNK:], 9)
    for step in (1, 2, 3, 1000, 65536, len(packed)):
        assert _gunzip(packed, step) == content, step
    # On a drive the data goes on after the last member; there it just ends.
    assert _gunzip(packed + bytes(5000) + b"junk", 4096, trailing=True) == content
    assert _gunzip(packed + b"\x1f", 7, trailing=True) == content
    with pytest.raises(UsageError):
        _gunzip(packed + b"junk", 4096)
    with pytest.raises(UsageError):
        _gunzip(packed[:-1], 4096, trailing=True)
    with pytest.raises(UsageError):
        _gunzip(zlib.compress(content), 4096)


# -- streaming in bounded memory --------------------------------------------------


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def own_cloud(tmp_path: Path) -> Iterator[Cloud]:
    """A server of this test's own, with no history."""
    c = start_cloud(tmp_path / "var")
    try:
        yield c
    finally:
        stop_cloud(c)


@pytest.mark.timeout(30)
def test_slow_1gib_upload_and_download_stream_in_bounded_memory(own_cloud: Cloud) -> None:
    """SLOW (5-15 s; at most 30 s, server start included): 1 GiB up and down
    through a server of its own, whose peak RSS may grow by under 64 MiB.
    The drive is sparse: 64 KiB of data every 32 MiB.
    """
    with new_user(own_cloud) as http:
        d = create(http, "1G", "big")
        # Warm up every code path before measuring.
        write(http, d, os.urandom(2 * MiB))
        assert write_gzip(http, d, gzip.compress(os.urandom(2 * MiB))).status_code == 204
        assert read_hash(http, d, 2 * MiB)
        idle = _peak_rss(own_cloud.process.pid)
        rnd = random.Random(3)
        sent = hashlib.sha256()

        def body() -> Iterator[bytes]:
            for i in range(1024):
                chunk = bytearray(MiB)
                if i % 32 == 0:
                    chunk[:65536] = rnd.randbytes(65536)
                data = bytes(chunk)
                sent.update(data)
                yield data

        r = http.post(f"/drives/{d}/write", content=body(), timeout=60)
        assert r.status_code == 204, r.text
        received = hashlib.sha256()
        total = 0
        with http.stream("GET", f"/drives/{d}/read/0/1G", timeout=60) as r:
            assert r.headers["content-length"] == str(1 << 30)
            for chunk in r.iter_bytes():
                received.update(chunk)
                total += len(chunk)
        peak = _peak_rss(own_cloud.process.pid)

    assert total == 1 << 30
    assert received.hexdigest() == sent.hexdigest()
    assert peak - idle < 64 * MiB, f"peak RSS grew from {idle >> 20} to {peak >> 20} MiB"
    assert peak < 128 * MiB, f"peak RSS {peak >> 20} MiB (idle {idle >> 20} MiB)"
    # Sparse on disk: the zeros were not written out.
    assert os.stat(own_cloud.data / "drives" / d).st_blocks * 512 < 256 * MiB


# -- restart ------------------------------------------------------------------


def test_imaging_resumes_after_the_server_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "var"
    c = start_cloud(data)
    try:
        with c.admin_client() as a:
            r = a.post("/users/create", content="name restarter\n")
            creds = text_record(r.text)
        body, digest = spread_data(64, seed=2)
        with c.client(creds["user"], creds["secret"]) as http:
            src = create(http, "64M", "source")
            assert write_gzip(http, src, body).status_code == 204
            dest = create(http, "64M", "dest")
            assert http.post(f"/drives/{dest}/image/{src}").status_code == 204
            assert "imaging" in info(http, dest)
    finally:
        c.process.kill()  # SIGKILL: no shutdown at all
        c.process.wait()

    c = start_cloud(data)
    try:
        with c.client(creds["user"], creds["secret"]) as http:
            wait_imaged(http, dest)
            assert f"resuming imaging of {dest}" in c.log.read_text()
            assert read_hash(http, dest, 64 * MiB) == digest
            assert read_hash(http, src, 64 * MiB) == digest
            # The job is done for good: the drive can be destroyed.
            assert http.post(f"/drives/{dest}/destroy").status_code == 204
        assert sorted(os.listdir(data / "drives")) == [src]
    finally:
        stop_cloud(c)
