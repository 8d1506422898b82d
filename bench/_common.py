"""Shared pieces of the benchmarks: servers in subprocesses, users and drive
rows written straight into the store, ``wrk`` runs and their figures.

Not a benchmark itself: ``make bench`` runs every ``bench/*.py``, so running
this module does nothing. The benchmarks compare against a baseline measured
in the same run because the machine is shared and noisy; absolute figures
from two runs are not comparable, ratios roughly are.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from overcast.config import load_settings
from overcast.model.drive import Drive
from overcast.model.user import digest_key, new_key
from overcast.store import Store, migrate
from overcast.store import drives as drive_rows
from overcast.store import users as user_rows

__all__ = [
    "BENCH",
    "BenchUser",
    "Server",
    "WrkResult",
    "bare_server",
    "basic_auth",
    "bench_user",
    "free_port",
    "import_guest",
    "keys_of",
    "overcast_server",
    "parse_wrk",
    "peak_rss_kib",
    "populate",
    "run_wrk",
    "serve_bare",
]

BENCH = Path(__file__).resolve().parent
GUEST_GZ = BENCH.parent / "build" / "guest" / "guest.img.gz"
GIB = 1 << 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic_auth(uuid: str, secret: str) -> str:
    """The ``Authorization`` header value for a user (wrk needs it spelled out)."""
    return "Basic " + base64.b64encode(f"{uuid}:{secret}".encode()).decode()


# -- the store, written directly ----------------------------------------------


@dataclass(frozen=True)
class BenchUser:
    uuid: str
    secret: str
    drives: tuple[str, ...]

    @property
    def authorization(self) -> str:
        return basic_auth(self.uuid, self.secret)


def populate(data: Path, drives_per_user: Sequence[int]) -> list[BenchUser]:
    """Create one user per entry with that many drive rows, straight in the store.

    Going through ``POST /drives/create`` would run ``qemu-img`` once per
    drive (minutes for 10,000); info calls never look at the image files, so
    rows without files measure the same thing. Run it before the server
    starts: the server then finds a migrated store and only adds its admin.
    """
    data.mkdir(parents=True, exist_ok=True)
    url = load_settings(data=data).store
    migrate(url)
    return asyncio.run(_populate(url, drives_per_user))


async def _populate(url: str, drives_per_user: Sequence[int]) -> list[BenchUser]:
    store = Store(url)
    made = []
    try:
        for n, count in enumerate(drives_per_user):
            secret = new_key()
            async with store.write() as conn:
                user = await user_rows.insert_user(
                    conn, f"bench{n}", digest_key(secret), admin=False
                )
                uuids = []
                for i in range(count):
                    drive = Drive(
                        uuid=_uuid(n, i),
                        user=user.uuid,
                        name=f"bench drive {i}",
                        size=GIB,
                        tags=("bench", f"batch{i % 10}"),
                        meta={"user:purpose": "benchmark"},
                    )
                    await drive_rows.insert_drive(conn, drive)
                    uuids.append(drive.uuid)
            made.append(BenchUser(user.uuid, secret, tuple(uuids)))
    finally:
        await store.close()
    return made


def _uuid(user: int, drive: int) -> str:
    """Deterministic drive UUIDs so that runs are alike (insert order = id order)."""
    return f"b0000000-0000-4000-8{user:03x}-{drive:012x}"


# -- servers in subprocesses --------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def _serve(
    cmd: list[str],
    url: str,
    probe: str,
    expect: int,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    environ = None if env is None else {**os.environ, **env}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
    server = Server(url, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[-1]!r} exited:\n{log.read_text()}")
            try:
                if httpx.get(url + probe, timeout=1).status_code == expect:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer:\n{log.read_text()}")
            time.sleep(0.05)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def overcast_server(data: Path, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """``overcast serve`` on loopback, started as an operator starts it (SQLite);
    ``env`` adds to its environment (``OVERCAST_*`` settings)."""
    port = free_port()
    cmd = [sys.executable, "-m", "overcast.cli", "serve", "--data", str(data)]
    cmd += ["--listen", f"127.0.0.1:{port}"]
    log = data.parent / f"{data.name}.log"
    with _serve(cmd, f"http://127.0.0.1:{port}", "/drives/list", 401, log, env) as server:
        yield server


def keys_of(text: str) -> dict[str, str]:
    """One record of the API's text format (``key value`` lines)."""
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def import_guest(data: Path, library: str) -> None:
    """Register the test guest as library drive ``library``, as ``make run`` does."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "overcast.cli", "admin", "--data", str(data)),
            *("drive", "import-standard", str(GUEST_GZ), "--name", "guest"),
            *("--uuid", library),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)


@contextmanager
def bench_user(server: Server, data: Path, timeout: float = 120) -> Iterator[httpx.Client]:
    """A client of a new user of ``server``, made with the admin's
    credentials that ``serve`` wrote to ``data``."""
    admin = keys_of((data / "admin.txt").read_text())
    with httpx.Client(base_url=server.url, auth=(admin["uuid"], admin["secret"]), timeout=60) as a:
        r = a.post("/users/create", content="name bench\n")
        r.raise_for_status()
        user = keys_of(r.text)
    with httpx.Client(
        base_url=server.url, auth=(user["user"], user["secret"]), timeout=timeout
    ) as client:
        yield client


@contextmanager
def bare_server(tmp: Path) -> Iterator[Server]:
    """The framework ceiling: Starlette answering a constant, uvicorn as ``serve`` runs it."""
    port = free_port()
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import _common; "
    code += f"_common.serve_bare({port})"
    with _serve(
        [sys.executable, "-c", code], f"http://127.0.0.1:{port}", "/", 200, tmp / "bare.log"
    ) as s:
        yield s


def serve_bare(port: int) -> None:
    """Run the bare app (in the subprocess :func:`bare_server` starts)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def constant(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    app = Starlette(routes=[Route("/", constant, methods=["GET", "POST"])])
    # The same keyword arguments as ``overcast serve`` (src/overcast/cli/main.py).
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def peak_rss_kib(pid: int) -> int:
    """``VmHWM``: the most resident memory the process has ever had, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmHWM for pid {pid}")
    return int(match.group(1))


# -- wrk -----------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    """Non-2xx responses plus socket errors (connect, read, write, timeout)."""


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{output}")
        return match

    errors = 0
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(bad.group(1))
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in sock.groups())
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in").group(1)),
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        errors=errors,
    )


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    authorization: str | None = None,
    timeout_s: int = 60,
) -> WrkResult:
    """One ``wrk`` run (one thread: the other core is the server's)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    cmd += [f"--timeout={timeout_s}s"]
    if authorization:
        cmd += ["-H", f"Authorization: {authorization}"]
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=True
    )
    return parse_wrk(done.stdout)


if __name__ == "__main__":
    # ``make bench`` runs every bench/*.py; this helper has nothing to measure.
    pass
