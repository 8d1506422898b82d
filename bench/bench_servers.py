"""Server create: ``POST /servers/create`` against the same QEMU spawned by hand.

A real ``overcast serve`` (SQLite, fresh data directory, the test guest as
a library drive) answers on 127.0.0.1. Each trial pair, interleaved so that
drift on a shared machine hits both sides alike:

(a) API: ``POST /servers/create`` (one IDE disk imaged from the guest, one
    e1000 NIC) until its 200 reply;
(b) raw: the exact command line of the QEMU that (a) started, read from
    ``/proc/PID/cmdline`` once that server is destroyed, run again by hand
    with a fresh run directory (same tap name: QEMU makes the tap itself,
    on no bridge) until QMP answers and ``cont`` returns;
(c) both until the guest prints its marker on the serial console
    (fewer trials: each boot takes seconds).

a/b is overcast's whole overhead on create: HTTP, auth, the store
transaction, the tap on its bridge, the device checks over QMP; c(api)/c(raw)
is what a user waiting for a booted guest pays (goal: at most 1.15). Last,
10 creates sent at once: the wall time until the last reply vs one create.

Run: ``.venv/bin/python bench/bench_servers.py [--small]``.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from qemu.qmp import QMPClient

from _common import bench_user, import_guest, keys_of, overcast_server
from overcast.model.server import MHZ_PER_CORE

__all__ = ["Figures", "main", "run"]

LIBRARY = "0c0c0c0c-0000-4000-8000-000000000001"
MARKER = b"OVERCAST-GUEST-UP"
BOOT_TIMEOUT = 120.0
#: MHz asked for: all of this machine's cores (``MHZ_PER_CORE`` each).
CPU = (os.cpu_count() or 1) * MHZ_PER_CORE


@dataclass
class Figures:
    """Milliseconds per trial, by measure."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    #: Wall time of ``concurrent`` creates sent at once, and how many.
    burst_ms: float = 0.0
    concurrent: int = 0

    def add(self, name: str, value: float) -> None:
        self.ms.setdefault(name, []).append(value)

    def p50(self, name: str) -> float:
        return statistics.median(self.ms[name])

    def p95(self, name: str) -> float:
        values = sorted(self.ms[name])
        return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int) -> None:
    """SIGKILL a daemonized QEMU and wait for its end (it is not our child)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        select.select([fd], [], [], 10)
    finally:
        os.close(fd)


def _wait_marker(serial: Path, since: float) -> float:
    """Milliseconds from ``since`` (perf_counter) until the marker is on ``serial``."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if MARKER in serial.read_bytes():
                return (time.perf_counter() - since) * 1000
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"no {MARKER!r} on {serial} after {BOOT_TIMEOUT} s")


class _Api:
    """One user of the cloud under test, with the calls the trials need."""

    def __init__(self, url: str, data: Path, client: httpx.Client) -> None:
        self.url = url
        self.data = data
        self.c = client

    def drive(self) -> str:
        r = self.c.post("/drives/create", content="name bench\nsize 64M\n")
        r.raise_for_status()
        drive = keys_of(r.text)["drive"]
        self.c.post(f"/drives/{drive}/image/{LIBRARY}/gunzip").raise_for_status()
        while "imaging" in keys_of(self.c.get(f"/drives/{drive}/info").text):
            time.sleep(0.02)
        return drive

    @staticmethod
    def body(drive: str) -> str:
        # The whole machine's MHz on one vCPU: the cgroup cap that ``cpu`` sets
        # then never binds, so the guest runs as free as the hand-run QEMU.
        return (
            f"name bench\ncpu {CPU}\nsmp 1\nmem 128\nide:0:0 {drive}\nboot ide:0:0\n"
            "nic:0:model e1000\n"
        )

    def create(self, drive: str, client: httpx.Client | None = None) -> tuple[str, float]:
        """Create a server; its UUID and the milliseconds until the 200 reply."""
        began = time.perf_counter()
        r = (client or self.c).post("/servers/create", content=self.body(drive))
        elapsed = (time.perf_counter() - began) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        return keys_of(r.text)["server"], elapsed

    def rundir(self, server: str) -> Path:
        return self.data / "run" / server

    def argv(self, server: str) -> list[str]:
        pid = int((self.rundir(server) / "qemu.pid").read_text())
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode() for a in raw.split(b"\0")[:-1]]

    def destroy(self, server: str) -> None:
        r = self.c.post(f"/servers/{server}/destroy")
        if r.status_code != 204:
            raise RuntimeError(f"destroy: {r.status_code} {r.text}")


async def _qmp_cont(socket_path: Path) -> None:
    qmp = QMPClient("bench")
    await qmp.connect(str(socket_path))
    try:
        await qmp.execute("cont")
    finally:
        await qmp.disconnect()


def _raw(argv: list[str], old: Path, new: Path, boot: bool) -> tuple[float, float | None]:
    """Run ``argv`` with run directory ``new`` instead of ``old``: milliseconds
    until ``cont`` returned and (with ``boot``) until the marker. Kills it after."""
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    args = [a.replace(str(old), str(new)) for a in argv]
    began = time.perf_counter()
    # QEMU daemonizes: its first process exits once the daemon is set up.
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    asyncio.run(_qmp_cont(new / "qmp.sock"))
    ready = (time.perf_counter() - began) * 1000
    booted = _wait_marker(new / "serial.log", began) if boot else None
    _kill(int((new / "qemu.pid").read_text()))
    shutil.rmtree(new, ignore_errors=True)
    return ready, booted


def run(*, trials: int = 20, boot_trials: int = 5, concurrent: int = 10) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="ocb-", dir="/tmp") as tmp:
        data = Path(tmp) / "var"
        data.mkdir()
        import_guest(data, LIBRARY)
        with overcast_server(data) as oc, bench_user(oc, data) as c:
            api = _Api(oc.url, data, c)
            _trials(api, Path(tmp) / "raw", figures, trials, boot_trials)
            _burst(api, figures, concurrent)
    return figures


def _trials(api: _Api, raw: Path, figures: Figures, trials: int, boot_trials: int) -> None:
    drive = api.drive()
    api.destroy(api.create(drive)[0])  # warm-up: first imports, first tap, page cache
    for i in range(max(trials, boot_trials)):
        boot = i < boot_trials
        began = time.perf_counter()
        server, ms = api.create(drive)
        if i < trials:
            figures.add("a api create", ms)
        rundir = api.rundir(server)
        if boot:
            figures.add("c api boot", _wait_marker(rundir / "serial.log", began))
        argv = api.argv(server)
        api.destroy(server)  # frees the image's lock and the tap's name
        ready, booted = _raw(argv, rundir, raw, boot)
        if i < trials:
            figures.add("b raw qemu", ready)
        if booted is not None:
            figures.add("c raw boot", booted)
    api.c.post(f"/drives/{drive}/destroy")


def _burst(api: _Api, figures: Figures, concurrent: int) -> None:
    if concurrent < 1:
        return
    drives = [api.drive() for _ in range(concurrent)]
    servers: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(concurrent + 1)

    def one(drive: str) -> None:
        with httpx.Client(base_url=api.url, auth=api.c.auth, timeout=120) as client:
            start.wait()
            try:
                servers.append(api.create(drive, client)[0])
            except BaseException as err:
                errors.append(err)

    threads = [threading.Thread(target=one, args=(d,)) for d in drives]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    figures.burst_ms = (time.perf_counter() - began) * 1000
    figures.concurrent = concurrent
    for server in servers:
        api.destroy(server)
    if errors:
        raise RuntimeError(f"{len(errors)} of {concurrent} concurrent creates failed: {errors[0]}")


def report(f: Figures) -> None:
    print(f"  {'measure':<16} {'trials':>6} {'p50 ms':>9} {'p95 ms':>9}")
    for name, values in f.ms.items():
        print(f"  {name:<16} {len(values):>6} {f.p50(name):>9.1f} {f.p95(name):>9.1f}")
    a, b = "a api create", "b raw qemu"
    print(
        f"\n  a/b (create reply vs bare QEMU + QMP cont): p50 {f.p50(a) / f.p50(b):.2f}"
        f"  p95 {f.p95(a) / f.p95(b):.2f}"
    )
    if "c api boot" in f.ms:
        ca, cr = "c api boot", "c raw boot"
        print(
            f"  c(api)/c(raw) (until the guest is up):     p50 {f.p50(ca) / f.p50(cr):.2f}"
            f"  p95 {f.p95(ca) / f.p95(cr):.2f}   goal <= 1.15"
        )
    if f.concurrent:
        one = f.p50(a)
        print(
            f"  {f.concurrent} creates at once: {f.burst_ms:.0f} ms until the last reply "
            f"= {f.burst_ms / one:.1f} x one create (p50 {one:.0f} ms)"
        )


def main(small: bool = False) -> Figures:
    print(
        "bench_servers: POST /servers/create vs the same QEMU argv by hand (test guest, TCG or KVM)"
    )
    figures = run(trials=3, boot_trials=0, concurrent=2) if small else run()
    report(figures)
    return figures


if __name__ == "__main__":
    main(small="--small" in sys.argv[1:])
