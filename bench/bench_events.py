"""Exit callbacks: latency from a stop to its callback, and delivery
throughput, each next to a raw ``httpx`` POST to the same receiver in the
same run.

The receiver is a Starlette app under uvicorn in its own process on
127.0.0.1 (the other core is the sender's); it answers every POST 200 and
notes when each arrived on ``time.monotonic()``, which on Linux is one
clock for every process, so the bench can subtract its own send times.

1. Exit → callback: a real ``overcast serve`` (SQLite, loopback callbacks
   allowed) and a user made over the API. Each trial creates a server
   without drives (QEMU starts; nothing needs to boot) whose
   ``callback:exit`` is ``/hook/N`` on the receiver, then times
   ``POST /servers/S/stop`` (its 204) and the callback's arrival, both from
   just before the stop was sent. Interleaved with each trial, a raw POST
   of a JSON body as long as the callback's, from one keep-alive client
   (as the deliverer's pooled client is): its reply and its arrival.
2. Throughput: 10,000 events appended straight into a fresh SQLite store
   with :func:`overcast.store.events.append_event`, one for each of 10,000
   distinct server ids (a server's events go out one at a time, in order,
   so one server would measure round trips instead), all to the one URL.
   Then the Deliverer the cloud runs (``Cloud.open(background=False)``,
   whose deliverer is built as ``overcast serve`` builds it: the user's
   signing secret read per event, the URL check, 64 in flight: its
   default) until the store shows every delivery done. The baseline:
   10,000 POSTs of a body as long from an ``httpx.AsyncClient`` with 64 at
   once, before and after; the better one is the ceiling.

About 3-4 minutes on a 2-core machine, most of it part 2.

Run: ``.venv/bin/python bench/bench_events.py [--small]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from _common import BENCH, Server, _serve, bench_user, free_port, keys_of, overcast_server
from overcast.cluster.cloud import Cloud
from overcast.config import load_settings
from overcast.events.delivery import Deliverer
from overcast.events.outbox import payload
from overcast.store import events as event_rows
from overcast.store.tables import deliveries

__all__ = ["Figures", "main", "run", "serve_receiver"]

#: Requests in flight: the Deliverer's default, which the cloud runs with;
#: the raw baseline uses as many.
CONCURRENCY: int = inspect.signature(Deliverer).parameters["concurrency"].default

#: Measures of part 1, in the order they are printed.
STOP = "POST /servers/S/stop, its reply"
EXIT = "stop sent -> callback arrived"
AFTER = "stop replied -> callback arrived"
RAW = "raw httpx POST, its reply"
RAW_ARRIVED = "raw httpx POST sent -> arrived"


@dataclass
class Figures:
    """Part 1 in milliseconds per trial; part 2 in seconds per run."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    #: Bytes of a callback's JSON body (the raw POSTs send as many).
    callback_bytes: int = 0
    events: int = 0
    concurrency: int = 0
    #: Bytes of a queued event's JSON body (the raw POSTs send as many).
    event_bytes: int = 0
    #: Seconds until the store showed every delivery done.
    deliver_s: float = 0.0
    #: Deliveries the store shows done, and those that took more than one try.
    delivered: int = 0
    retried: int = 0
    #: Distinct ``webhook-id`` the receiver got from the deliverer.
    received: int = 0
    #: Seconds for the raw POSTs, before and after the deliverer's run.
    raw_s: list[float] = field(default_factory=list)

    def add(self, name: str, value: float) -> None:
        self.ms.setdefault(name, []).append(value)

    def p50(self, name: str) -> float:
        return statistics.median(self.ms[name])

    def p99(self, name: str) -> float:
        values = sorted(self.ms[name])
        return values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]

    @property
    def deliver_rate(self) -> float:
        return self.events / self.deliver_s

    @property
    def raw_rate(self) -> float:
        """The better of the two raw runs (drift on a shared machine shows as a gap)."""
        return self.events / min(self.raw_s)


# -- the receiver (its own process) --------------------------------------------


def serve_receiver(port: int) -> None:
    """Run the receiver (in the subprocess :func:`_receiver` starts).

    ``GET /wait?path=P`` blocks until a POST to ``P`` arrived and returns
    when (monotonic seconds) and its body; ``GET /stats`` counts POSTs and
    distinct ``webhook-id`` since the last ``POST /reset``.
    """
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    arrivals: dict[str, tuple[float, str]] = {}
    waiting: dict[str, asyncio.Event] = {}
    ids: set[str] = set()
    posts = [0]

    async def hook(request: Request) -> Response:
        at = time.monotonic()
        body = await request.body()
        path = request.url.path
        posts[0] += 1
        if webhook_id := request.headers.get("webhook-id"):
            ids.add(webhook_id)
        if path not in arrivals:
            arrivals[path] = (at, body.decode())
            if path in waiting:
                waiting[path].set()
        return Response(status_code=200)

    async def wait(request: Request) -> Response:
        path = request.query_params["path"]
        if path not in arrivals:
            event = waiting.setdefault(path, asyncio.Event())
            try:
                async with asyncio.timeout(float(request.query_params.get("timeout", "30"))):
                    await event.wait()
            except TimeoutError:
                return JSONResponse({"error": f"nothing at {path}"}, status_code=504)
        at, body = arrivals[path]
        return JSONResponse({"at": at, "body": body})

    async def stats(_request: Request) -> Response:
        return JSONResponse({"posts": posts[0], "ids": len(ids)})

    async def reset(_request: Request) -> Response:
        arrivals.clear()
        waiting.clear()
        ids.clear()
        posts[0] = 0
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/wait", wait),
            Route("/stats", stats),
            Route("/reset", reset, methods=["POST"]),
            Route("/{path:path}", hook, methods=["POST"]),
        ]
    )
    # The same keyword arguments as ``overcast serve`` (src/overcast/cli/main.py).
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


@contextmanager
def _receiver(tmp: Path) -> Iterator[Server]:
    port = free_port()
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import bench_events; "
    code += f"bench_events.serve_receiver({port})"
    with _serve(
        [sys.executable, "-c", code], f"http://127.0.0.1:{port}", "/stats", 200, tmp / "rx.log"
    ) as server:
        yield server


def _arrival(rx: httpx.Client, path: str) -> tuple[float, str]:
    r = rx.get("/wait", params={"path": path, "timeout": 30}, timeout=40)
    if r.status_code != 200:
        raise RuntimeError(f"receiver: {r.status_code} {r.text}")
    got = r.json()
    return float(got["at"]), str(got["body"])


def _json_of_size(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (a padded string field)."""
    empty = len(json.dumps({"pad": ""}, separators=(",", ":")))
    return json.dumps({"pad": "x" * max(0, size - empty)}, separators=(",", ":")).encode()


# -- 1. exit -> callback -------------------------------------------------------


def _exits(tmp: Path, rx: httpx.Client, figures: Figures, exits: int, warmup: int) -> None:
    data = tmp / "var"
    data.mkdir()
    with (
        overcast_server(data, env={"OVERCAST_CALLBACK_PRIVATE": "true"}) as oc,
        bench_user(oc, data, timeout=60) as c,
        httpx.Client(timeout=30) as raw,
    ):
        body = b""
        for i in range(warmup + exits):
            measured = i >= warmup
            hook = f"/hook/{i}"
            spec = f"name b{i}\ncpu 500\nmem 64\ncallback:exit {rx.base_url}{hook}\n"
            r = c.post("/servers/create", content=spec)
            if r.status_code != 200:
                raise RuntimeError(f"create: {r.status_code} {r.text}")
            server = keys_of(r.text)["server"]
            sent = time.monotonic()
            r = c.post(f"/servers/{server}/stop")
            replied = time.monotonic()
            if r.status_code != 204:
                raise RuntimeError(f"stop: {r.status_code} {r.text}")
            arrived, callback = _arrival(rx, hook)
            if not body:
                figures.callback_bytes = len(callback.encode())
                body = _json_of_size(figures.callback_bytes)
            if measured:
                figures.add(STOP, (replied - sent) * 1000)
                figures.add(EXIT, (arrived - sent) * 1000)
                figures.add(AFTER, (arrived - replied) * 1000)
            path = f"/raw/{i}"
            sent = time.monotonic()
            r = raw.post(
                f"{rx.base_url}{path}",
                content=body,
                headers={"content-type": "application/json"},
            )
            replied = time.monotonic()
            r.raise_for_status()
            arrived, _ = _arrival(rx, path)
            if measured:
                figures.add(RAW, (replied - sent) * 1000)
                figures.add(RAW_ARRIVED, (arrived - sent) * 1000)


# -- 2. throughput --------------------------------------------------------------


def _body(server: str, user: str, url: str) -> dict[str, str | int]:
    """What the cloud records for a stopped server without drives
    (``overcast.model.server.server_info``)."""
    return {
        "server": server,
        "user": user,
        "name": "bench",
        "status": "active",
        "started": int(time.time()),
        "cpu": 500,
        "mem": 64,
        "smp": 1,
        "persistent": "false",
        "callback:exit": url,
    }


async def _delivered(cloud: Cloud) -> int:
    async with cloud.store.read() as tx:
        query = sa.select(sa.func.count()).where(deliveries.c.delivered_at.is_not(None))
        return int((await tx.execute(query)).scalar_one())


async def _throughput(tmp: Path, receiver: str, figures: Figures, events: int) -> None:
    url = f"{receiver}/hook"
    concurrency = CONCURRENCY
    async with httpx.AsyncClient(base_url=receiver, timeout=30) as rx:
        # A fresh SQLite store in the temp dir; no host, no guests, no
        # background work: only the deliverer, started by hand below.
        settings = load_settings(data=tmp / "events")
        settings = dataclasses.replace(settings, callback_private=True)
        cloud = await Cloud.open(settings, background=False)
        try:
            user, _key = await cloud.users.create("bench")
            started = time.monotonic()
            ids: list[int] = []
            for first in range(0, events, 500):
                async with cloud.store.write() as tx:
                    for n in range(first, min(events, first + 500)):
                        server = f"e0000000-0000-4000-8000-{n:012x}"
                        event = await event_rows.append_event(
                            tx,
                            type="server.exit",
                            user=user.uuid,
                            server=server,
                            reason="stopped",
                            at=time.time(),
                            body=_body(server, user.uuid, url),
                            callback=url,
                        )
                        ids.append(event.id)
            figures.event_bytes = len(payload(event))
            print(
                f"  store: {events} events for {events} distinct servers appended with "
                f"append_event ({time.monotonic() - started:.1f} s), "
                f"{figures.event_bytes} bytes each"
            )
            body = _json_of_size(figures.event_bytes)
            figures.events, figures.concurrency = events, concurrency

            figures.raw_s.append(await _raw_posts(rx, url, body, events, concurrency))
            await rx.post("/reset")
            started = time.monotonic()
            cloud.deliverer.start()
            try:
                deadline = started + 600
                while await _delivered(cloud) < events:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{await _delivered(cloud)} of {events} delivered")
                    await asyncio.sleep(0.02)
                figures.deliver_s = time.monotonic() - started
            finally:
                await cloud.deliverer.stop()
            figures.received = (await rx.get("/stats")).json()["ids"]
            async with cloud.store.read() as tx:
                done = [await event_rows.get_delivery(tx, i) for i in ids]
            figures.delivered = sum(1 for d in done if d is not None and d.delivered_at)
            figures.retried = sum(1 for d in done if d is not None and d.attempts > 1)
            figures.raw_s.append(await _raw_posts(rx, url, body, events, concurrency))
        finally:
            await cloud.close()


async def _raw_posts(
    rx: httpx.AsyncClient, url: str, body: bytes, count: int, concurrency: int
) -> float:
    """Seconds for ``count`` POSTs of ``body`` to ``url``, ``concurrency`` at once."""
    await rx.post("/reset")
    todo = iter(range(count))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            for i in todo:
                r = await client.post(
                    url,
                    content=body,
                    headers={"content-type": "application/json", "webhook-id": f"raw-{i}"},
                )
                r.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - started
    got = (await rx.get("/stats")).json()["ids"]
    if got != count:
        raise RuntimeError(f"receiver got {got} of {count} raw POSTs")
    return seconds


# -- the run ---------------------------------------------------------------------


def run(*, exits: int = 100, warmup: int = 3, events: int = 10_000) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="ocb-events-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        with _receiver(tmp) as rx_server, httpx.Client(base_url=rx_server.url) as rx:
            _exits(tmp, rx, figures, exits, warmup)
            rx.post("/reset").raise_for_status()
            asyncio.run(_throughput(tmp, rx_server.url, figures, events))
    return figures


def report(f: Figures) -> None:
    n = len(f.ms[EXIT])
    print(f"\n  exit -> callback ({n} exits, callback body {f.callback_bytes} bytes)")
    print(f"  {'measure':<34} {'trials':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for name in (STOP, EXIT, AFTER, RAW, RAW_ARRIVED):
        print(f"  {name:<34} {len(f.ms[name]):>6} {f.p50(name):>9.2f} {f.p99(name):>9.2f}")
    for label, base in (("raw POST reply", RAW), ("raw POST arrival", RAW_ARRIVED)):
        print(
            f"  exit->callback / {label + ':':<18} p50 {f.p50(EXIT) / f.p50(base):6.1f} x"
            f"   p99 {f.p99(EXIT) / f.p99(base):6.1f} x"
        )
    print(
        f"\n  throughput ({f.events} events, one per server id, one receiver URL, "
        f"{f.concurrency} at once, body {f.event_bytes} bytes)"
    )
    print(f"  {'sender':<42} {'seconds':>8} {'events/s':>9}")
    print(f"  {'raw httpx POSTs (before)':<42} {f.raw_s[0]:>8.2f} {f.events / f.raw_s[0]:>9.0f}")
    print(
        f"  {'Deliverer: outbox -> signed POST -> mark':<42} {f.deliver_s:>8.2f} "
        f"{f.deliver_rate:>9.0f}"
    )
    print(f"  {'raw httpx POSTs (after)':<42} {f.raw_s[1]:>8.2f} {f.events / f.raw_s[1]:>9.0f}")
    print(
        f"  Deliverer / raw (better run): {f.deliver_rate / f.raw_rate:.2f}"
        f"   delivered {f.delivered}/{f.events}, retried {f.retried}, "
        f"distinct webhook-ids received {f.received}"
    )


def main(small: bool = False) -> Figures:
    print("bench_events: exit callbacks (latency, throughput) vs raw httpx POSTs, same receiver")
    figures = run(exits=3, warmup=1, events=50) if small else run()
    report(figures)
    return figures


if __name__ == "__main__":
    main(small="--small" in sys.argv[1:])
