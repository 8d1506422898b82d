"""Hot-plug and suspend/resume (issue 6) on real QEMU guests, real taps and bridges.

Two ways in:

* The session cloud's HTTP API where a call exists: ``POST
  /servers/S/suspend`` and ``/resume``, and a cloud of its own killed with
  ``kill -9`` while a guest is paused.
* In process (:class:`Local`) for attaching and detaching, which have no
  ElasticHosts call (the OCCI front end calls these very service methods):
  ``ServerService`` on a SQLite store, a drive pool and a ``HostAgent`` with
  this test's interface prefix, wired as ``overcast serve`` wires them.
  :meth:`Local.restart` is a restart of ``overcast serve`` (a new agent
  adopts the guests, the service reconciles), and :meth:`Local.qmp` talks
  QMP to a guest directly while no agent holds its one QMP connection.

Guests without an OS (blank disks) start in tens of milliseconds and serve
everything that needs no guest cooperation; the tests that unplug PCI
devices boot the test guest, whose Linux releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import tempfile
import time
import uuid as _uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from qemu.qmp import QMPClient

from cloud import Cloud
from overcast.cluster.drives import DriveService
from overcast.cluster.exits import report_of_end
from overcast.cluster.fleet import Fleet
from overcast.cluster.hosts import HostService
from overcast.cluster.imaging import Imager
from overcast.cluster.resources import ResourceService
from overcast.cluster.servers import ServerService
from overcast.cluster.users import UserService
from overcast.host.agent import GuestEnd, HostAgent
from overcast.host.client import LocalHost
from overcast.host.pool import Pool
from overcast.hypervisor import net
from overcast.hypervisor.argv import (
    disk_device,
    hotplug_ports,
    nic_device,
    nic_netdev,
    qemu_argv,
    taps_from_argv,
)
from overcast.hypervisor.qemu import QemuDriver
from overcast.hypervisor.spec import Accel, DiskSpec, GuestInfo, GuestSpec, NicSpec
from overcast.model.drive import ClaimType, DriveChanges, DriveSpec
from overcast.model.errors import BusyError, FullError, MissingError, UsageError
from overcast.model.host import LOCAL
from overcast.model.server import Server, ServerStatus
from overcast.model.user import User
from overcast.store import Store, migrate
from overcast.store import servers as server_rows
from overcast.store import usage as usage_rows
from overcast.store.engine import sqlite_url
from qemus import alive, qemus_in
from test_host_agent import guest_image as guest_image
from test_host_agent import ifprefix as ifprefix
from test_host_agent import work as work
from test_server_restart import Site, _keys, _site, _wait
from test_servers import (
    Servers,
    assert_error,
    boot_drive,
    records,
    serial,
    server_keys,
    the_qemu,
    wait_marker,
)
from test_servers import guest as guest
from test_servers import servers as servers

MARKER = "OVERCAST-GUEST-UP"
BOOT_TIMEOUT = 60.0
#: cpu for guests that boot: a whole core (a smaller quota slows a TCG boot).
BOOT_CPU = "2000"


# -- the pure parts: command line and specs ------------------------------------------


def _spec(**kw: object) -> GuestSpec:
    fields: dict[str, object] = {
        "uuid": "6f1c1d3e-2b1a-4f7e-9a55-0d7e3a1b2c3d",
        "name": "hp",
        "smp": 1,
        "mem_mib": 128,
        "cpu_mhz": 1000,
    }
    fields.update(kw)
    return GuestSpec(**fields)  # type: ignore[arg-type]


def test_every_guest_has_empty_hotplug_ports_on_one_slot_first() -> None:
    argv = qemu_argv(_spec(), Path("/run/oc/g"), "tcg")
    devices = [json.loads(v) for o, v in itertools.pairwise(argv) if o == "-device"]
    ports = [d for d in devices if d["driver"] == "pcie-root-port"]
    assert [p["id"] for p in ports] == list(hotplug_ports()) == ["hp0", "hp1", "hp2", "hp3"]
    # The functions of one root-bus slot, the first devices on the line
    # (nothing placed automatically can take that slot), each its own chassis.
    assert devices[: len(ports)] == ports
    assert [p["addr"] for p in ports] == ["0x1e.0x0", "0x1e.0x1", "0x1e.0x2", "0x1e.0x3"]
    assert [p.get("multifunction") for p in ports] == [True, None, None, None]
    assert len({p["chassis"] for p in ports}) == len(ports)
    assert all(p["bus"] == "pcie.0" for p in ports)
    # And a SCSI controller, to hot-plug scsi:0:U onto.
    assert {"driver": "virtio-scsi-pci", "id": "scsi0"} in devices


def test_hotplugged_devices_are_the_command_lines_on_a_port() -> None:
    image = Path("/data/d1")
    virtio = DiskSpec(image, "virtio", 0, 3, shared=True)
    assert disk_device(virtio, port="hp2") == {
        "driver": "virtio-blk-pci",
        "id": "drive-block-3",
        "drive": "node-block-3",
        "bus": "hp2",
        "share-rw": True,
    }
    # A SCSI disk stays on the SCSI controller whatever port is offered.
    scsi = DiskSpec(image, "scsi", 0, 5, media="cdrom")
    assert disk_device(scsi, port="hp0") == {
        "driver": "scsi-cd",
        "id": "drive-scsi-0-5",
        "drive": "node-scsi-0-5",
        "bus": "scsi0.0",
        "channel": 0,
        "scsi-id": 5,
        "lun": 0,
    }
    nic = NicSpec("virtio", "52:54:00:00:00:07", "t1234abcdef0123", index=3)
    assert nic_device(nic, port="hp1") == {
        "driver": "virtio-net-pci",
        "id": "nic3",
        "bus": "hp1",
        "netdev": "net3",
        "mac": "52:54:00:00:00:07",
    }
    assert nic_netdev(nic) == {
        "type": "tap",
        "id": "net3",
        "ifname": "t1234abcdef0123",
        "script": "no",
        "downscript": "no",
    }
    with pytest.raises(UsageError, match="tap"):
        nic_netdev(NicSpec("virtio", "52:54:00:00:00:07", index=3))


def test_nics_are_named_after_their_api_index() -> None:
    """nic:0 and nic:2 are devices nic0 and nic2 (so nic:1 can be plugged in
    between later); a NIC without an index takes its position."""
    nics = (
        NicSpec("e1000", "52:54:00:00:00:01", "tap-a", index=0),
        NicSpec("virtio", "52:54:00:00:00:02", "tap-c", index=2),
    )
    argv = qemu_argv(_spec(nics=nics), Path("/run/oc/g"), "tcg")
    assert taps_from_argv(argv) == {"nic0": "tap-a", "nic2": "tap-c"}
    assert [n.index for n in _spec(nics=(NicSpec("e1000", "52:54:00:00:00:01"),)).nics] == [0]
    with pytest.raises(UsageError, match="NIC index"):
        _spec(
            nics=(
                NicSpec("e1000", "52:54:00:00:00:01", index=1),
                NicSpec("e1000", "52:54:00:00:00:02"),  # position 1
            )
        )
    with pytest.raises(UsageError, match="range"):
        NicSpec("e1000", "52:54:00:00:00:01", index=10)


# -- an in-process cloud ---------------------------------------------------------------


@dataclass
class Local:
    """The services of ``overcast serve`` in this process, on real QEMU."""

    work: Path
    accel: Accel
    ifprefix: str
    unplug_timeout: float

    async def open(self) -> Local:
        self.url = sqlite_url(self.work / "oc.db")
        await asyncio.to_thread(migrate, self.url)
        self.store = Store(self.url)
        self.pool = Pool(self.work / "drives")
        self.imager = Imager(self.store, self.pool)
        self.users = UserService(self.store)
        self.drives = DriveService(self.store, self.pool, self.imager)
        self.resources = ResourceService(self.store)
        self.ends: list[GuestEnd] = []
        await self._start_host()
        return self

    async def _start_host(self) -> None:
        self.driver = QemuDriver(self.accel, timeout=15.0, unplug_timeout=self.unplug_timeout)
        self.agent = HostAgent(
            self.work / "run", self.driver, self._on_exit, ifprefix=self.ifprefix
        )
        await HostService(self.store).register_local(cpu=64_000, mem=64_000)
        fleet = Fleet(self.store, LocalHost(self.agent), "http://127.0.0.1:1", self._on_host_exit)
        self.servers = ServerService(self.store, self.pool, fleet)
        await self.agent.adopt_all()
        await self.servers.reconcile()

    async def _on_exit(self, end: GuestEnd) -> None:
        self.ends.append(end)
        await self.servers.host_exited(report_of_end(end, LOCAL))

    async def _on_host_exit(self, host: str, end: GuestEnd) -> None:
        await self.servers.host_exited(report_of_end(end, host))

    async def restart(self) -> None:
        """``overcast serve`` going away and coming back: guests run on."""
        await self.agent.close()
        await self._start_host()

    @contextlib.asynccontextmanager
    async def qmp(self, server: str) -> AsyncIterator[QMPClient]:
        """Our own QMP connection to a guest: the agent lets go of it meanwhile
        (QEMU serves one client), and a new one adopts it afterwards."""
        await self.agent.close()
        client = QMPClient("test")
        await client.connect(str(self.work / "run" / server / "qmp.sock"))
        try:
            yield client
        finally:
            await client.disconnect()
            await self._start_host()

    async def close(self) -> None:
        await self.agent.close()
        await self.imager.close()
        await self.store.close()

    # -- objects -------------------------------------------------------------

    async def user(self, name: str = "hotplug") -> User:
        return (await self.users.create(name))[0]

    async def drive(self, user: User, size: int = 1 << 20, name: str = "d", **kw: object) -> str:
        drive = await self.drives.create(user, DriveSpec(name, size))
        if kw:
            await self.drives.set(user, drive.uuid, DriveChanges(**kw))  # type: ignore[arg-type]
        return drive.uuid

    async def guest_drive(self, user: User, image: Path) -> str:
        """A drive of ``user``'s with the test guest on it."""
        drive = await self.drive(user, 64 << 20, "boot")
        with image.open("rb") as source, self.pool.path(drive).open("r+b") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
        return drive

    async def create(self, user: User, *, stopped: bool = False, **keys: str) -> Server:
        """A server; keys as in :func:`test_servers.server_keys` (``ide_0_0=...``)."""
        config = {"name": "hp", "cpu": "500", "mem": "128"}
        config.update({k.replace("_", ":"): v for k, v in keys.items()})
        return await self.servers.create(user, config, stopped=stopped)

    async def guest(self, server: str) -> GuestInfo:
        return (await self.agent.info(server)).info

    async def claims(self, drive: str) -> list[tuple[str, str, bool]]:
        async with self.store.read() as tx:
            return [tuple(c) for c in await server_rows.drive_claims(tx, drive)]  # type: ignore[misc]

    def recorded_taps(self, server: str) -> list[str]:
        """The taps the agent's record (agent.json) lists for a guest."""
        data = json.loads((self.work / "run" / server / "agent.json").read_text())
        return [str(tap) for tap in data["taps"]]

    def serial(self, server: str) -> str:
        path = self.work / "run" / server / "serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_serial(self, server: str, text: str, count: int = 1) -> None:
        began = time.monotonic()
        while self.serial(server).count(text) < count:
            assert time.monotonic() - began < BOOT_TIMEOUT, (text, self.serial(server))
            await asyncio.sleep(0.1)


@pytest.fixture
async def local(work: Path, accel: Accel, ifprefix: str) -> AsyncIterator[Local]:
    made = await Local(work, accel, ifprefix, unplug_timeout=10.0).open()
    try:
        yield made
    finally:
        await made.close()


def _disks(info: GuestInfo) -> dict[str, str]:
    return {d.device: d.image for d in info.disks}


def _nics(info: GuestInfo) -> dict[str, tuple[str, str, str | None]]:
    return {n.device: (n.model, n.mac, n.tap) for n in info.nics}


# -- drives --------------------------------------------------------------------------


async def test_scsi_drive_attached_to_a_running_server_and_detached(local: Local) -> None:
    """No guest OS is needed for SCSI: QEMU removes the disk at once."""
    user = await local.user()
    boot = await local.drive(user, name="boot")
    extra = await local.drive(user, name="extra")
    server = (await local.create(user, ide_0_0=boot)).uuid
    began = time.perf_counter()
    after = await local.servers.attach_drive(user, server, "scsi:0:3", extra)
    took = time.perf_counter() - began
    print(f"\nattach scsi:0:3 to a running server: {took * 1000:.0f} ms")
    assert after.status is ServerStatus.ACTIVE
    assert after.config["scsi:0:3"] == extra and "scsi:0:3:media" not in after.config
    # QEMU has it (query-block, with its image), and the store's claim is taken.
    assert _disks(await local.guest(server)) == {
        "drive-ide-0-0": str(local.pool.path(boot)),
        "drive-scsi-0-3": str(local.pool.path(extra)),
    }
    assert await local.claims(extra) == [(server, "scsi:0:3", True)]
    info = await local.servers.info(after)
    assert info["scsi:0:3"] == extra and info["scsi:0:3:media"] == "disk"
    assert "scsi:0:3:read:bytes" in info

    began = time.perf_counter()
    after = await local.servers.detach_drive(user, server, "scsi:0:3")
    print(f"detach scsi:0:3: {(time.perf_counter() - began) * 1000:.0f} ms")
    assert "scsi:0:3" not in after.config
    assert _disks(await local.guest(server)) == {"drive-ide-0-0": str(local.pool.path(boot))}
    assert await local.claims(extra) == []
    # QEMU closed the image too: another guest may open it for writing
    # (QEMU's image lock would refuse while the first still had it).
    other = (await local.create(user, name="other", block_0=extra)).uuid
    assert _disks(await local.guest(other)) == {"drive-block-0": str(local.pool.path(extra))}
    # Detaching what is not there is missing; the server is unchanged.
    with pytest.raises(MissingError):
        await local.servers.detach_drive(user, server, "scsi:0:3")


async def test_a_cdrom_and_a_shared_drive_hot_plugged(local: Local) -> None:
    user = await local.user()
    shared = await local.drive(user, name="shared", claim_type=ClaimType.SHARED)
    cd = await local.drive(user, name="cd")
    first = (await local.create(user, name="a", scsi_0_0=shared)).uuid
    second = (await local.create(user, name="b")).uuid
    # A shared drive is opened shareable on hot-plug too (QEMU's lock would
    # otherwise refuse the second writer).
    await local.servers.attach_drive(user, second, "scsi:0:1", shared)
    await local.servers.attach_drive(user, second, "scsi:0:2", cd, media="cdrom")
    info = await local.guest(second)
    assert {d.device: d.readonly for d in info.disks} == {
        "drive-scsi-0-1": False,
        "drive-scsi-0-2": True,
    }
    assert sorted(await local.claims(shared)) == sorted(
        [(first, "scsi:0:0", False), (second, "scsi:0:1", False)]
    )
    shown = await local.servers.info(await local.servers.owned(user, second))
    assert shown["scsi:0:2:media"] == "cdrom"


async def test_ide_is_refused_while_running_and_a_config_change_when_stopped(
    local: Local,
) -> None:
    user = await local.user()
    boot, extra = await local.drive(user, name="boot"), await local.drive(user, name="x")
    running = await local.create(user, ide_0_0=boot, boot="ide:0:0", persistent="true")
    for call in (
        local.servers.attach_drive(user, running.uuid, "ide:1:0", extra),
        local.servers.detach_drive(user, running.uuid, "ide:0:0"),
    ):
        with pytest.raises(BusyError, match="IDE"):
            await call
    assert (await local.servers.owned(user, running.uuid)).config == running.config
    assert await local.claims(extra) == []

    # Stopped: a change of its configuration only, no claim until it runs.
    await local.servers.stop(user, running.uuid)
    stopped = await local.servers.attach_drive(user, running.uuid, "ide:1:0", extra)
    assert stopped.status is ServerStatus.STOPPED and stopped.config["ide:1:0"] == extra
    assert await local.claims(extra) == []
    await local.servers.start(user, running.uuid)
    assert set(_disks(await local.guest(running.uuid))) == {"drive-ide-0-0", "drive-ide-1-0"}
    assert await local.claims(extra) == [(running.uuid, "ide:1:0", True)]
    await local.servers.stop(user, running.uuid)
    after = await local.servers.detach_drive(user, running.uuid, "ide:0:0")
    # The boot order loses it too (else the configuration would be invalid).
    assert "ide:0:0" not in after.config and "boot" not in after.config
    assert after.config["ide:1:0"] == extra


async def test_bad_attaches_and_detaches_change_nothing(local: Local) -> None:
    user = await local.user()
    other = await local.user("other")
    boot = await local.drive(user, name="boot")
    free = await local.drive(user, name="free")
    held = await local.drive(user, name="held")
    foreign = await local.drive(other, name="foreign")
    holder = (await local.create(user, name="holder", scsi_0_0=held)).uuid
    theirs = (await local.create(other, name="theirs")).uuid
    server = await local.create(user, ide_0_0=boot, nic_0_model="virtio")
    vlan = (await local.resources.create_vlan(user)).uuid
    their_vlan = (await local.resources.create_vlan(other)).uuid
    mac = next(n.mac for n in server.nics)
    await local.servers.suspend(user, holder)
    before_guest = await local.guest(server.uuid)

    cases: list[tuple[Callable[[], Awaitable[object]], type[Exception]]] = [
        (lambda: local.servers.attach_drive(user, server.uuid, "ide:3:0", free), UsageError),
        (lambda: local.servers.attach_drive(user, server.uuid, "floppy:0", free), UsageError),
        (lambda: local.servers.attach_drive(user, server.uuid, "scsi:1:0", free), UsageError),
        (lambda: local.servers.attach_drive(user, server.uuid, "block:8", free), UsageError),
        (lambda: local.servers.attach_drive(user, server.uuid, "block:1", "nope"), UsageError),
        (
            lambda: local.servers.attach_drive(user, server.uuid, "block:1", free, media="tape"),
            UsageError,
        ),
        (lambda: local.servers.attach_drive(user, server.uuid, "block:1", boot), UsageError),
        (lambda: local.servers.attach_drive(user, server.uuid, "block:1", foreign), MissingError),
        (
            lambda: local.servers.attach_drive(user, server.uuid, "block:1", str(_uuid.uuid4())),
            MissingError,
        ),
        (lambda: local.servers.attach_drive(user, server.uuid, "block:1", held), BusyError),
        (lambda: local.servers.attach_drive(user, server.uuid, "ide:0:0", free), BusyError),
        (lambda: local.servers.attach_drive(user, holder, "scsi:0:1", free), BusyError),  # paused
        (lambda: local.servers.attach_drive(user, theirs, "scsi:0:1", free), MissingError),
        (lambda: local.servers.attach_drive(user, "not-a-uuid", "scsi:0:1", free), UsageError),
        (lambda: local.servers.detach_drive(user, server.uuid, "scsi:0:5"), MissingError),
        (lambda: local.servers.detach_drive(user, server.uuid, "sata:0"), UsageError),
        (lambda: local.servers.detach_drive(user, holder, "scsi:0:0"), BusyError),  # paused
        (lambda: local.servers.attach_nic(user, server.uuid, 0), BusyError),
        (lambda: local.servers.attach_nic(user, server.uuid, 1, model="ne2000"), UsageError),
        (lambda: local.servers.attach_nic(user, server.uuid, 8), UsageError),
        (lambda: local.servers.attach_nic(user, server.uuid, 12), UsageError),
        (lambda: local.servers.attach_nic(user, server.uuid, 1, vlan="nope"), UsageError),
        (lambda: local.servers.attach_nic(user, server.uuid, 1, vlan=their_vlan), MissingError),
        (
            lambda: local.servers.attach_nic(user, server.uuid, 1, vlan=vlan, dhcp="auto"),
            UsageError,
        ),
        (lambda: local.servers.attach_nic(user, server.uuid, 1, dhcp="192.0.2.200"), MissingError),
        (
            lambda: local.servers.attach_nic(user, server.uuid, 1, mac="01:00:5e:00:00:01"),
            UsageError,
        ),
        (lambda: local.servers.attach_nic(user, server.uuid, 1, mac=mac), BusyError),
        (lambda: local.servers.attach_nic(user, holder, 1), BusyError),  # paused
        (lambda: local.servers.detach_nic(user, server.uuid, 3), MissingError),
    ]
    for call, kind in cases:
        with pytest.raises(kind):
            await call()

    assert await local.servers.owned(user, server.uuid) == server
    assert await local.claims(free) == []
    assert await local.claims(held) == [(holder, "scsi:0:0", True)]
    now = await local.guest(server.uuid)
    assert (_disks(now), _nics(now)) == (_disks(before_guest), _nics(before_guest))
    assert set(local.recorded_taps(server.uuid)) == {local.agent.tap(server.uuid, 0)}


async def test_one_exclusive_drive_raced_for_by_many_attaches(local: Local) -> None:
    user = await local.user()
    drive = await local.drive(user, name="contested")
    targets = [(await local.create(user, name=f"s{i}")).uuid for i in range(3)]
    aims = [(server, f"scsi:0:{unit}") for server in targets for unit in range(4)]
    results = await asyncio.gather(
        *(local.servers.attach_drive(user, server, device, drive) for server, device in aims),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Server)]
    assert len(won) == 1, results
    for (server, _device), result in zip(aims, results, strict=True):
        if server != won[0].uuid:
            assert isinstance(result, BusyError), result  # claimed by the winner
        elif not isinstance(result, Server):
            # The winner's other devices: one drive cannot be on two of them.
            assert isinstance(result, UsageError) and "on both" in str(result), result
    (winner,) = won
    (device,) = [k for k, v in winner.config.items() if v == drive]
    assert await local.claims(drive) == [(winner.uuid, device, True)]
    for server in targets:
        has = {d.image for d in (await local.guest(server)).disks}
        assert (str(local.pool.path(drive)) in has) == (server == winner.uuid)
        config = (await local.servers.owned(user, server)).config
        assert (drive in config.values()) == (server == winner.uuid)


async def test_a_pci_disk_the_guest_does_not_release_stays_attached(
    work: Path, accel: Accel, ifprefix: str
) -> None:
    """With no guest OS nothing answers the PCIe unplug request: detach gives
    up after ``unplug_timeout`` with 409 busy and the record keeps the drive."""
    local = await Local(work, accel, ifprefix, unplug_timeout=1.0).open()
    try:
        user = await local.user()
        extra = await local.drive(user, name="extra")
        server = (await local.create(user)).uuid
        await local.servers.attach_drive(user, server, "block:2", extra)
        assert "drive-block-2" in _disks(await local.guest(server))
        began = time.perf_counter()
        with pytest.raises(BusyError, match="let go"):
            await local.servers.detach_drive(user, server, "block:2")
        assert 1.0 <= time.perf_counter() - began < 5.0
        assert (await local.servers.owned(user, server)).config["block:2"] == extra
        assert await local.claims(extra) == [(server, "block:2", True)]
        assert "drive-block-2" in _disks(await local.guest(server))
        # Stopping the server ends it all: the claim goes with the run.
        await local.servers.stop(user, server)
        assert await local.claims(extra) == []
    finally:
        await local.close()


async def test_four_pci_hotplugs_fit_the_fifth_is_busy(local: Local) -> None:
    user = await local.user()
    server = (await local.create(user, persistent="true")).uuid
    for n in range(3):
        await local.servers.attach_drive(user, server, f"block:{n}", await local.drive(user))
    await local.servers.attach_nic(user, server, 0)
    spare = await local.drive(user, name="spare")
    with pytest.raises(BusyError, match="hot-plug ports"):
        await local.servers.attach_drive(user, server, "block:3", spare)
    assert "block:3" not in (await local.servers.owned(user, server)).config
    assert await local.claims(spare) == []
    # SCSI needs no port.
    await local.servers.attach_drive(user, server, "scsi:0:0", spare)
    # A stop and start puts them all on the root bus and frees the ports.
    await local.servers.stop(user, server)
    await local.servers.start(user, server)
    guest = await local.guest(server)
    assert set(_disks(guest)) == {
        "drive-block-0",
        "drive-block-1",
        "drive-block-2",
        "drive-scsi-0-0",
    }
    assert set(_nics(guest)) == {"nic0"}
    await local.servers.attach_drive(user, server, "block:3", await local.drive(user))


# -- NICs ------------------------------------------------------------------------------


async def test_nic_on_a_vlan_hot_plugged_into_a_running_server(local: Local) -> None:
    user = await local.user()
    vlan = (await local.resources.create_vlan(user)).uuid
    server = (await local.create(user, nic_0_model="e1000")).uuid
    after = await local.servers.attach_nic(user, server, 2, model="virtio", vlan=vlan)
    (nic,) = [n for n in after.nics if n.index == 2]
    assert (nic.vlan, nic.model.value) == (vlan, "virtio")
    assert after.config["nic:2:vlan"] == vlan
    tap = local.agent.tap(server, 2)
    # QEMU has the card with its MAC on a tap of its own, that tap on the VLAN's bridge.
    assert _nics(await local.guest(server)) == {
        "nic0": (
            "e1000",
            next(n.mac for n in after.nics if n.index == 0),
            local.agent.tap(server, 0),
        ),
        "nic2": ("virtio-net-pci", nic.mac, tap),
    }
    link = await net.link(tap)
    assert link is not None and (link.kind, link.master, link.up) == (
        "tun",
        local.agent.bridge(vlan),
        True,
    )
    assert tap in local.recorded_taps(server)  # a restart can clean it up
    info = await local.servers.info(after)
    assert info["nic:2:mac"] == nic.mac and info["nic:2:vlan"] == vlan

    # On a port of its own, as QEMU itself says.
    async with local.qmp(server) as qmp:
        bus = await qmp.execute(
            "qom-get", {"path": "/machine/peripheral/nic2", "property": "parent_bus"}
        )
        netdevs = await qmp.execute("human-monitor-command", {"command-line": "info network"})
    assert str(bus).split("/")[-1] in hotplug_ports()
    assert f"ifname={tap}" in str(netdevs)

    # After that restart the new agent knows the hot-plugged tap, and a
    # stop cleans it up with the others.
    assert _nics(await local.guest(server))["nic2"][2] == tap
    await local.servers.stop(user, server)
    assert await net.link(tap) is None
    assert await net.link(local.agent.tap(server, 0)) is None


async def test_nic_address_and_mac_rules_on_attach(local: Local) -> None:
    user = await local.user()
    await local.resources.add_pool("192.0.2.0/29", "192.0.2.1", None)
    ip = (await local.resources.create_ip(user)).address
    first = (await local.create(user, name="a", persistent="true")).uuid
    second = (await local.create(user, name="b")).uuid
    after = await local.servers.attach_nic(user, first, 0, model="e1000", dhcp="auto")
    assert [n.ip for n in after.nics] == [ip]
    # The address is in use now; so is an explicit MAC once taken.
    with pytest.raises(BusyError):
        await local.servers.attach_nic(user, second, 0, dhcp=ip)
    with pytest.raises(FullError):  # none of the user's addresses is free
        await local.servers.attach_nic(user, second, 0, dhcp="auto")
    taken = after.nics[0].mac
    with pytest.raises(BusyError):
        await local.servers.attach_nic(user, second, 0, mac=taken)
    assert (await local.servers.owned(user, second)).nics == ()
    # Stopped, the server keeps both (a definition holds its NICs); detached,
    # they are free again. (Unplugging from a running guest needs its OS:
    # see test_virtio_disk_and_nic_in_a_booted_guest.)
    await local.servers.stop(user, first)
    with pytest.raises(BusyError):
        await local.servers.attach_nic(user, second, 0, mac=taken)
    await local.servers.detach_nic(user, first, 0)
    again = await local.servers.attach_nic(user, second, 0, dhcp=ip, mac=taken)
    assert [(n.ip, n.mac) for n in again.nics] == [(ip, taken)]


async def test_nics_of_a_stopped_server_change_its_configuration(local: Local) -> None:
    user = await local.user()
    server = (await local.create(user, persistent="true", stopped=True)).uuid
    after = await local.servers.attach_nic(user, server, 1, model="rtl8139")
    assert after.status is ServerStatus.STOPPED and [n.index for n in after.nics] == [1]
    await local.servers.start(user, server)
    assert _nics(await local.guest(server))["nic1"][0] == "rtl8139"
    await local.servers.stop(user, server)
    after = await local.servers.detach_nic(user, server, 1)
    assert after.nics == () and not any(k.startswith("nic:") for k in after.config)


# -- with a guest OS: PCI unplug completes, the guest sees the devices -------------------------


async def test_virtio_disk_and_nic_in_a_booted_guest(local: Local, guest_image: Path) -> None:
    user = await local.user()
    boot = await local.guest_drive(user, guest_image)
    extra = await local.drive(user, 2 << 20, "extra")
    server = (await local.create(user, cpu=BOOT_CPU, ide_0_0=boot, nic_0_model="e1000")).uuid
    await local.wait_serial(server, "OVERCAST-DEVICES-END")

    began = time.perf_counter()
    await local.servers.attach_drive(user, server, "block:1", extra)
    plugged_disk = time.perf_counter() - began
    began = time.perf_counter()
    after = await local.servers.attach_nic(user, server, 1, model="virtio")
    plugged_nic = time.perf_counter() - began
    mac = next(n.mac for n in after.nics if n.index == 1)
    assert "drive-block-1" in _disks(await local.guest(server))
    assert _nics(await local.guest(server))["nic1"] == (
        "virtio-net-pci",
        mac,
        local.agent.tap(server, 1),
    )

    # The guest sees them: its device list after a reset (the devices stay
    # across a reset) has the second disk, 2 MiB, and the second card.
    await local.servers.reset(user, server)
    await local.wait_serial(server, "OVERCAST-DEVICES-END", count=2)
    console = local.serial(server).split(MARKER)[-1].splitlines()
    assert "OVERCAST-DISK vda 4096" in console, console
    assert any(re.fullmatch(rf"OVERCAST-NIC eth\d {mac} virtio_net", line) for line in console)

    # Linux lets go of PCI devices: DEVICE_DELETED comes, nothing is left.
    began = time.perf_counter()
    await local.servers.detach_drive(user, server, "block:1")
    unplugged_disk = time.perf_counter() - began
    began = time.perf_counter()
    after = await local.servers.detach_nic(user, server, 1)
    unplugged_nic = time.perf_counter() - began
    print(
        f"\nbooted guest: plug virtio disk {plugged_disk * 1000:.0f} ms, NIC "
        f"{plugged_nic * 1000:.0f} ms; unplug (guest releases) disk "
        f"{unplugged_disk * 1000:.0f} ms, NIC {unplugged_nic * 1000:.0f} ms"
    )
    guest_now = await local.guest(server)
    assert set(_disks(guest_now)) == {"drive-ide-0-0"}
    assert set(_nics(guest_now)) == {"nic0"}
    assert [n.index for n in after.nics] == [0]
    assert await local.claims(extra) == []
    assert await net.link(local.agent.tap(server, 1)) is None
    assert local.agent.tap(server, 1) not in local.recorded_taps(server)
    # The image is closed and the ports are free again: both go back in.
    await local.servers.attach_drive(user, server, "block:1", extra)
    await local.servers.attach_nic(user, server, 1, model="e1000", mac=mac)
    assert _nics(await local.guest(server))["nic1"][:2] == ("e1000", mac)


# -- suspend and resume ------------------------------------------------------------------


async def test_suspend_resume_and_what_a_paused_server_allows(local: Local) -> None:
    user = await local.user()
    boot = await local.drive(user, name="boot")
    server = await local.create(user, ide_0_0=boot, persistent="true")
    began = time.time()
    paused = await local.servers.suspend(user, server.uuid)
    assert paused.status is ServerStatus.PAUSED
    assert (await local.guest(server.uuid)).status == "paused"
    assert (await local.servers.info(paused))["status"] == "paused"
    assert paused.started == server.started  # the same run goes on
    with pytest.raises(BusyError):
        await local.servers.suspend(user, server.uuid)
    with pytest.raises(BusyError, match="paused"):
        await local.servers.shutdown(user, server.uuid)
    with pytest.raises(BusyError):
        await local.servers.start(user, server.uuid)
    with pytest.raises(BusyError, match="paused"):
        await local.servers.reset(user, server.uuid)
    assert (await local.guest(server.uuid)).status == "paused"
    # set works as on a running server.
    await local.servers.set(user, server.uuid, {"name": "renamed"})
    assert (await local.servers.owned(user, server.uuid)).status is ServerStatus.PAUSED

    resumed = await local.servers.resume(user, server.uuid)
    assert resumed.status is ServerStatus.ACTIVE
    assert (await local.guest(server.uuid)).status == "running"
    with pytest.raises(BusyError):
        await local.servers.resume(user, server.uuid)

    # Paused again, then stopped: it ends like a running server, claims go,
    # and the ledger bills the whole run, paused time included.
    await local.servers.suspend(user, server.uuid)
    await asyncio.sleep(0.5)
    await local.servers.stop(user, server.uuid)
    ended = time.time()
    stopped = await local.servers.owned(user, server.uuid)
    assert stopped.status is ServerStatus.STOPPED
    assert await local.claims(boot) == []
    async with local.store.read() as tx:
        rows = await usage_rows.usage_between(tx, user.uuid, 0, ended + 1, object=server.uuid)
    assert [r.reason for r in rows] == ["exit"]
    assert rows[0].start == server.started
    assert began - 0.1 < rows[0].end <= ended + 0.1
    # And a destroy of a paused one.
    again = (await local.create(user)).uuid
    await local.servers.suspend(user, again)
    await local.servers.destroy(user, again)
    with pytest.raises(MissingError):
        await local.servers.owned(user, again)
    assert qemus_in(local.work / "run" / again) == []


async def test_a_restart_adopts_a_paused_guest_paused_and_settles_drift(local: Local) -> None:
    user = await local.user()
    kept = (await local.create(user, name="kept")).uuid
    drifted = (await local.create(user, name="drifted")).uuid
    lost = await local.drive(user, name="lost")
    await local.servers.suspend(user, kept)
    pid = (await local.guest(kept)).pid
    # What a crash between the QMP call and the store's write leaves: the
    # guest paused while the store says active, and an attach whose guest
    # side never happened (the record has the drive and its claim).
    # Paused behind the store's back (as a crash between QMP stop and the
    # store's write leaves it): the restart that follows the QMP session
    # adopts both guests paused and the store follows the guest.
    async with local.qmp(drifted) as qmp:
        await qmp.execute("stop")
    assert (await local.servers.owned(user, drifted)).status is ServerStatus.PAUSED
    adopted = await local.servers.owned(user, kept)
    assert adopted.status is ServerStatus.PAUSED
    info = await local.guest(kept)
    assert (info.pid, info.status) == (pid, "paused")  # adopted, not killed as a cut-short start
    assert local.ends == []

    # An attach cut short after its transaction: the record has the drive
    # and its claim, the guest never got it. The next restart drops both.
    async with local.store.write() as tx:
        current = await server_rows.get_server(tx, drifted)
        assert current is not None
        await server_rows.take_claims(tx, drifted, [server_rows.Claim(lost, "scsi:0:4", True)])
        await server_rows.update_config(tx, drifted, {**current.config, "scsi:0:4": lost})
    await local.restart()
    settled = await local.servers.owned(user, drifted)
    assert settled.status is ServerStatus.PAUSED
    assert "scsi:0:4" not in settled.config and await local.claims(lost) == []
    await local.servers.resume(user, kept)
    assert (await local.guest(kept)).status == "running"


async def test_a_guest_reset_while_paused_is_not_taken_for_an_interrupted_start(
    local: Local,
) -> None:
    """QEMU puts a guest reset while paused in ``prelaunch``, the state of a
    start cut short, which adoption kills. The agent's record tells them
    apart: this one had run."""
    user = await local.user()
    server = (await local.create(user)).uuid
    await local.servers.suspend(user, server)
    await local.agent.reset(server)  # as a guest's own reboot racing the suspend would
    pid = (await local.guest(server)).pid
    assert (await local.guest(server)).status == "prelaunch"
    await local.restart()
    assert local.ends == []
    assert (await local.guest(server)).pid == pid
    assert (await local.servers.owned(user, server)).status is ServerStatus.PAUSED
    await local.servers.resume(user, server)
    assert (await local.guest(server)).status == "running"


# -- over HTTP, on the session cloud ------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_over(pid: int, seconds: float) -> float:
    before = _cpu_seconds(pid)
    time.sleep(seconds)
    return _cpu_seconds(pid) - before


def test_suspend_and_resume_over_http(
    cloud: Cloud, guest: str, user: httpx.Client, servers: Servers
) -> None:
    server = servers.create(server_keys("paused", boot_drive(user), cpu=BOOT_CPU))
    pid = the_qemu(cloud, server)
    r = user.post(f"/servers/{server}/suspend")
    assert r.status_code == 200, r.text
    assert records(r.text)[0]["status"] == "paused"
    assert records(user.get(f"/servers/{server}/info").text)[0]["status"] == "paused"
    j = user.get("/servers/info", headers={"Accept": "application/json"}).json()
    assert [s["status"] for s in j if s["server"] == server] == ["paused"]
    # A booting TCG guest keeps a core busy; a paused one does nothing.
    idle = _cpu_over(pid, 1.5)
    console = serial(cloud, server)
    assert_error(user.post(f"/servers/{server}/suspend"), 409, "busy")
    assert_error(user.post(f"/servers/{server}/shutdown"), 409, "busy")
    assert_error(user.get(f"/servers/{server}/resume"), 405, "method")
    assert serial(cloud, server) == console

    r = user.post(f"/servers/{server}/resume", headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    busy = _cpu_over(pid, 1.5)
    print(f"\nCPU over 1.5 s: paused {idle:.2f} s, resumed {busy:.2f} s")
    assert idle < 0.15 < busy, (idle, busy)
    assert_error(user.post(f"/servers/{server}/resume"), 409, "busy")
    wait_marker(cloud, server)  # it boots on from where it was
    assert the_qemu(cloud, server) == pid
    assert_error(user.post(f"/servers/{_uuid.uuid4()}/suspend"), 404, "missing")


@pytest.fixture
def site() -> Iterator[Site]:
    with tempfile.TemporaryDirectory(prefix="och-", dir="/tmp") as tmp:
        yield from _site(Path(tmp) / "var")


def test_kill_9_with_a_paused_guest_adopts_it_paused(site: Site) -> None:
    with site.client() as c:
        r = c.post("/servers/create", content="name p\ncpu 500\nmem 128\nnic:0:model e1000\n")
        assert r.status_code == 200, r.text
        server = _keys(r.text)["server"]
        r = c.post(f"/servers/{server}/suspend")
        assert r.status_code == 200, r.text
        before = _keys(c.get(f"/servers/{server}/info").text)
    pid = site.qemu_pid(server)

    site.kill9()
    time.sleep(0.3)
    assert alive(pid)
    site.start()
    with site.client() as c:
        after = _keys(c.get(f"/servers/{server}/info").text)
        assert after["status"] == "paused"
        assert (after["started"], after["nic:0:mac"]) == (before["started"], before["nic:0:mac"])
        assert site.qemu_pid(server) == pid
        # Driven by the new run: it resumes, and its end is processed.
        r = c.post(f"/servers/{server}/resume")
        assert r.status_code == 200, r.text
        assert _keys(r.text)["status"] == "active"
        assert c.post(f"/servers/{server}/stop").status_code == 204
        _wait(lambda: not alive(pid), 10, "the guest to end")
        assert c.get(f"/servers/{server}/info").status_code == 404
    _wait(lambda: not site.rundir(server).exists(), 5, "the run directory to go")
