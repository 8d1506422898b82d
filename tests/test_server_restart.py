"""Restart safety: guests outlive ``overcast serve`` and a new run takes them back.

Each test runs clouds of its own (``start_cloud`` on a data directory of its
own), because the point is to ``kill -9`` the server and start it again on
the same directory. QEMU is daemonized, so a killed server's guests keep
running; the next run must adopt them unchanged, process as exits the ones
that ended while it was down, and settle any create that the kill cut short
(rolled back or completed, never left half-done). Every check goes through
the HTTP API or the real files a guest leaves (its pidfile, its serial log),
and the interrupted-create rows are written with ``overcast.store`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid as _uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, start_cloud, stop_cloud
from overcast.config import load_settings
from overcast.model.server import Server, ServerStatus
from overcast.store import Store
from overcast.store import servers as server_rows
from qemus import alive

ROOT = Path(__file__).resolve().parent.parent
GUEST_GZ = ROOT / "build" / "guest" / "guest.img.gz"
#: A booting TCG guest on a busy two-core machine takes several seconds.
BOOT_TIMEOUT = 60.0
#: Keys that change while a guest runs: I/O counters.
_COUNTERS = ("rx", "tx", "rx:packets", "tx:packets")


def _keys(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def _config(info: dict[str, str]) -> dict[str, str]:
    """Info without the I/O counters: what must be the same after a restart."""
    return {
        k: v
        for k, v in info.items()
        if k not in _COUNTERS and not k.endswith((":bytes", ":requests"))
    }


def _wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Site:
    """One data directory, its server (when up), a user and the guest library drive."""

    data: Path
    library: str = field(default_factory=lambda: str(_uuid.uuid4()))
    cloud: Cloud | None = None
    user: tuple[str, str] = ("", "")
    #: ``OVERCAST_*`` settings for every run of this site's server.
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Cloud:
        assert self.cloud is None or self.cloud.process.poll() is not None
        self.cloud = start_cloud(self.data, env=self.env)
        return self.cloud

    def kill9(self) -> None:
        """``kill -9`` of ``overcast serve``: no clean-up of any kind runs."""
        assert self.cloud is not None
        self.cloud.process.kill()
        self.cloud.process.wait()

    def stop(self) -> None:
        if self.cloud is not None and self.cloud.process.poll() is None:
            stop_cloud(self.cloud)

    @property
    def up(self) -> Cloud:
        assert self.cloud is not None and self.cloud.process.poll() is None
        return self.cloud

    def client(self) -> httpx.Client:
        return self.up.client(*self.user)

    def rundir(self, server: str) -> Path:
        return self.data / "run" / server

    def qemu_pid(self, server: str) -> int:
        return int((self.rundir(server) / "qemu.pid").read_text())

    def qemus(self) -> dict[str, int]:
        """Every live QEMU under this site's run directory, by server."""
        found = {}
        for pidfile in (self.data / "run").glob("*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                if alive(pid) and str(pidfile.parent) in Path(f"/proc/{pid}/cmdline").read_text(
                    errors="replace"
                ):
                    found[pidfile.parent.name] = pid
        return found

    # -- through the API ---------------------------------------------------

    def drive(self, c: httpx.Client, size: str = "64M", name: str = "d") -> str:
        r = c.post("/drives/create", content=f"name {name}\nsize {size}\n")
        assert r.status_code == 200, r.text
        return _keys(r.text)["drive"]

    def boot_drive(self, c: httpx.Client) -> str:
        """A drive of the user's with the guest imaged onto it."""
        drive = self.drive(c)
        r = c.post(f"/drives/{drive}/image/{self.library}/gunzip")
        assert r.status_code == 204, r.text
        _wait(lambda: "imaging" not in _keys(c.get(f"/drives/{drive}/info").text), 30, "imaging")
        return drive

    def create(
        self, c: httpx.Client, drive: str, *extra: str, persistent: bool = False
    ) -> dict[str, str]:
        body = f"name s\ncpu 500\nmem 128\nide:0:0 {drive}\nboot ide:0:0\nnic:0:model e1000\n"
        body += f"persistent {str(persistent).lower()}\n" + "".join(f"{e}\n" for e in extra)
        r = c.post("/servers/create", content=body)
        assert r.status_code == 200, r.text
        return _keys(r.text)


def _claimed(c: httpx.Client, drive: str) -> str | None:
    r = c.get(f"/drives/{drive}/info")
    assert r.status_code == 200, r.text
    return _keys(r.text).get("claimed")


def _reads(c: httpx.Client, server: str) -> int:
    """Bytes the guest has read from its boot disk: from its first second of
    BIOS on, more than nothing, so a guest that is not running reads 0."""
    r = c.get(f"/servers/{server}/info")
    assert r.status_code == 200, r.text
    return int(_keys(r.text).get("ide:0:0:read:bytes", "0"))


def _cleanup(site: Site) -> None:
    """End whatever guests a test left, through the API where possible, then by force."""
    with contextlib.suppress(Exception):
        if site.cloud is None or site.cloud.process.poll() is not None:
            site.start()
        with site.client() as c:
            for server in c.get("/servers/list").text.split():
                c.post(f"/servers/{server}/destroy")
    site.stop()
    for server, pid in site.qemus().items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        record = site.rundir(server) / "agent.json"
        with contextlib.suppress(OSError, ValueError):
            for tap in json.loads(record.read_text()).get("taps", []):
                subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)


@pytest.fixture
def site() -> Iterator[Site]:
    """A fresh data directory with the guest in its library, its server up, and a user.

    Not under pytest's ``tmp_path``: QMP sockets live in ``DATA/run/<uuid>/``
    and a unix socket path holds at most 107 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="ocr-", dir="/tmp") as tmp:
        yield from _site(Path(tmp) / "var")


def _site(data: Path, env: dict[str, str] | None = None) -> Iterator[Site]:
    s = Site(data, env=env or {})
    s.data.mkdir()
    s.start()
    try:
        done = s.up.overcast(
            "admin", "drive", "import-standard", str(GUEST_GZ), "--name", "guest",
            "--uuid", s.library,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with s.up.admin_client() as a:
            r = a.post("/users/create", content="name restart\n")
            assert r.status_code == 200, r.text
            keys = _keys(r.text)
        s.user = (keys["user"], keys["secret"])
        yield s
    finally:
        _cleanup(s)


def test_guests_survive_kill_9_and_are_adopted_unchanged(site: Site) -> None:
    with site.client() as c:
        plain = site.create(c, site.boot_drive(c))
        kept = site.create(c, site.boot_drive(c), persistent=True)
        servers = [plain["server"], kept["server"]]
        before = {s: _config(_keys(c.get(f"/servers/{s}/info").text)) for s in servers}
    pids = {s: site.qemu_pid(s) for s in servers}
    assert all(alive(pid) for pid in pids.values())

    site.kill9()
    time.sleep(0.5)  # long enough for anything tied to the server's life to go
    assert all(alive(pid) for pid in pids.values()), "a guest died with overcast serve"

    site.start()
    with site.client() as c:
        assert sorted(c.get("/servers/list").text.split()) == sorted(servers)
        for s in servers:
            after = _keys(c.get(f"/servers/{s}/info").text)
            assert after["status"] == "active"
            # Same MAC, same started time, same drives: the very same server.
            assert _config(after) == before[s]
            assert site.qemu_pid(s) == pids[s]
        # Still running, and driven by the new run: adopted, not merely left alone.
        for s in servers:
            _wait(lambda s=s: _reads(c, s) > 0, BOOT_TIMEOUT, f"guest {s} to read its disk")
        assert c.post(f"/servers/{plain['server']}/reset").status_code == 204

        assert c.post(f"/servers/{plain['server']}/stop").status_code == 204
        assert not alive(pids[plain["server"]])
        assert c.get(f"/servers/{plain['server']}/info").status_code == 404
        assert _claimed(c, plain["ide:0:0"]) is None

        assert c.post(f"/servers/{kept['server']}/stop").status_code == 204
        assert not alive(pids[kept["server"]])
        stopped = _keys(c.get(f"/servers/{kept['server']}/info").text)
        assert stopped["status"] == "stopped"
        assert _claimed(c, kept["ide:0:0"]) is None
        assert c.post(f"/servers/{kept['server']}/destroy").status_code == 204
        assert c.get("/servers/list").text.split() == []
    assert site.qemus() == {}
    assert not site.rundir(plain["server"]).exists()


def test_guests_that_ended_while_down_are_processed_as_exits_at_restart(site: Site) -> None:
    """While no agent runs, nothing can tell a guest's own power-off from a
    kill (both are a QEMU that is gone, see ``HostAgent.adopt_all``), so
    kills stand for every end here: a guest booting far enough to power
    itself off costs tens of seconds on a loaded machine."""
    with site.client() as c:
        killed = site.create(c, site.boot_drive(c))
        kept = site.create(c, site.boot_drive(c), persistent=True)
        survivor = site.create(c, site.boot_drive(c))
    pids = {s["server"]: site.qemu_pid(s["server"]) for s in (killed, kept, survivor)}

    site.kill9()
    for s in (killed, kept):
        os.kill(pids[s["server"]], signal.SIGKILL)
    _wait(lambda: not any(alive(pids[s["server"]]) for s in (killed, kept)), 10, "the kills")

    # By the time the restarted server answers, every end has been processed.
    site.start()
    with site.client() as c:
        listed = sorted(c.get("/servers/list").text.split())
        assert listed == sorted([survivor["server"], kept["server"]])
        assert c.get(f"/servers/{killed['server']}/info").status_code == 404
        assert not site.rundir(killed["server"]).exists()
        assert _claimed(c, killed["ide:0:0"]) is None
        stopped = _keys(c.get(f"/servers/{kept['server']}/info").text)
        assert stopped["status"] == "stopped"
        assert _claimed(c, kept["ide:0:0"]) is None
        assert _keys(c.get(f"/servers/{survivor['server']}/info").text)["status"] == "active"
        assert alive(pids[survivor["server"]])

        # The released drive is free for a new server; the stopped one starts again.
        again = site.create(c, killed["ide:0:0"])
        assert again["status"] == "active"
        r = c.post(f"/servers/{kept['server']}/start")
        assert r.status_code == 200, r.text
        assert _keys(r.text)["status"] == "active"
        assert _claimed(c, kept["ide:0:0"]) == f"{kept['server']}:ide:0:0"


async def _write_starting(data: Path, server: Server, drive: str) -> None:
    """What a create leaves when killed after its transaction: a ``starting``
    row holding its claim."""
    store = Store(load_settings(data=data).store)
    try:
        async with store.write() as tx:
            claim = server_rows.Claim(drive, "ide:0:0", exclusive=True)
            await server_rows.insert_server(tx, server, [claim])
    finally:
        await store.close()


async def _set_starting(data: Path, server: str) -> None:
    """What a create leaves when killed after its guest ran but before ``active``."""
    store = Store(load_settings(data=data).store)
    try:
        async with store.write() as tx:
            await server_rows.set_status(tx, server, ServerStatus.STARTING)
    finally:
        await store.close()


def test_an_interrupted_create_is_rolled_back_or_completed(site: Site) -> None:
    with site.client() as c:
        lost = site.boot_drive(c)
        ran = site.create(c, site.boot_drive(c))
    site.stop()

    # Killed before any guest existed: the row and its claim must go.
    half = Server(
        uuid=str(_uuid.uuid4()),
        user=site.user[0],
        config={
            "name": "half",
            "cpu": "500",
            "mem": "128",
            "ide:0:0": lost,
            "boot": "ide:0:0",
        },
        status=ServerStatus.STARTING,
        host="local",
    )
    asyncio.run(_write_starting(site.data, half, lost))
    # Killed after the guest ran, before the row said so: completed.
    asyncio.run(_set_starting(site.data, ran["server"]))

    site.start()
    with site.client() as c:
        assert c.get(f"/servers/{half.uuid}/info").status_code == 404
        assert _claimed(c, lost) is None
        assert c.post(f"/drives/{lost}/destroy").status_code == 204  # nothing holds it
        info = _keys(c.get(f"/servers/{ran['server']}/info").text)
        assert info["status"] == "active"
        assert c.get("/servers/list").text.split() == [ran["server"]]
    assert site.qemus() == {ran["server"]: site.qemu_pid(ran["server"])}


@dataclass
class _Outcome:
    trigger: str
    drive: str
    reply: int | str


def _create_then_kill(site: Site, c: httpx.Client, drive: str, trigger: str) -> _Outcome:
    """Start a create, ``kill -9`` the server at ``trigger``, return what the client saw.

    Triggers: ``rundir`` (the agent has begun: its run directory appeared),
    ``pidfile`` (QEMU has daemonized, probably still paused) or a delay in
    seconds after the request was sent.
    """
    run = site.data / "run"
    before = {p.name for p in run.iterdir()} if run.exists() else set()
    reply: list[int | str] = []

    def send() -> None:
        body = f"name s\ncpu 500\nmem 128\nide:0:0 {drive}\nboot ide:0:0\nnic:0:model e1000\n"
        try:
            reply.append(c.post("/servers/create", content=body).status_code)
        except httpx.TransportError as err:
            reply.append(type(err).__name__)

    def new_dirs() -> list[Path]:
        return [p for p in run.iterdir() if p.is_dir() and p.name not in before]

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 10
    if trigger == "rundir":
        while not new_dirs() and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.0005)
    elif trigger == "pidfile":
        while time.monotonic() < deadline and thread.is_alive():
            if any((p / "qemu.pid").exists() for p in new_dirs()):
                break
            time.sleep(0.0005)
    else:
        time.sleep(float(trigger))
    site.kill9()
    thread.join(30)
    return _Outcome(trigger, drive, reply[0] if reply else "none")


def test_kill_9_during_create_leaves_a_running_server_or_nothing(site: Site) -> None:
    outcomes = []
    for trigger in ("rundir", "pidfile", "0.03", "0.06", "0.1"):
        with site.client() as c:
            drive = site.boot_drive(c)
            outcomes.append(_create_then_kill(site, c, drive, trigger))
        site.start()

    with site.client() as c:
        servers = {}
        for server in c.get("/servers/list").text.split():
            info = _keys(c.get(f"/servers/{server}/info").text)
            assert info["status"] == "active", info
            servers[info["ide:0:0"]] = server
        for o in outcomes:
            if o.drive in servers:
                assert _claimed(c, o.drive) == f"{servers[o.drive]}:ide:0:0", o
            else:
                assert o.reply != 200, f"{o}: a create that answered 200 was lost"
                assert _claimed(c, o.drive) is None, o
        # Exactly the active servers have a QEMU, and each of them really runs:
        # a guest left paused before its first ``cont`` would never read its disk.
        qemus = site.qemus()
        assert set(qemus) == set(servers.values()), (outcomes, servers, qemus)
        for s in servers.values():
            _wait(lambda s=s: _reads(c, s) > 0, BOOT_TIMEOUT, f"guest {s} to run ({outcomes})")


async def _delete_row(data: Path, server: str) -> None:
    store = Store(load_settings(data=data).store)
    try:
        async with store.write() as tx:
            await server_rows.delete_server(tx, server)
    finally:
        await store.close()


def test_a_guest_without_a_server_is_stopped_at_restart(site: Site) -> None:
    """The server row is the right to run: a guest that outlived its row
    (whatever removed it while overcast was down) must not run on."""
    with site.client() as c:
        drive = site.boot_drive(c)
        orphan = site.create(c, drive)
    pid = site.qemu_pid(orphan["server"])
    site.kill9()
    asyncio.run(_delete_row(site.data, orphan["server"]))
    assert alive(pid)
    site.start()
    _wait(lambda: not alive(pid), 10, "the orphan's end")
    assert site.qemus() == {}
    with site.client() as c:
        assert _claimed(c, drive) is None
