"""RemoteHost: the manager's HostClient over HTTP, against a real second cloud.

The host is an ``overcast serve`` of its own on loopback (its own store, its
drive pool in a directory of the test's); the client speaks to it as its
admin, as a manager does. Guests are real QEMUs on that host.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud import Cloud, free_port, new_user, start_cloud, stop_cloud
from overcast.host.agent import GuestEnd, RunningGuest, VncAddress
from overcast.host.remote import RemoteHost, create_keys
from overcast.host.wire import decode_running_guest, encode_running_guest
from overcast.hypervisor.spec import (
    DiskSpec,
    DiskStats,
    GuestInfo,
    GuestSpec,
    NicSpec,
    NicStats,
    VncSpec,
)
from overcast.model.errors import (
    AuthError,
    BusyError,
    FailedError,
    FullError,
    MissingError,
    QuotaError,
    UsageError,
)
from overcast.model.server import Bus, NicModel, new_mac, parse_server_spec
from qemus import alive, qemus_in, scratch_dir
from receiver import Receiver

EXITS = "http://127.0.0.1:1/hosts/exits"
POOL = Path("/srv/drives")

# -- the pure parts ------------------------------------------------------------


def _disk(name: str, unit: int, **kwargs: object) -> DiskSpec:
    return DiskSpec(POOL / name, unit=unit, **kwargs)  # type: ignore[arg-type]


def test_keys_of_a_full_spec() -> None:
    drives = [str(uuid.uuid4()) for _ in range(3)]
    vlan = str(uuid.uuid4())
    spec = GuestSpec(
        uuid=str(uuid.uuid4()),
        name="web one",
        smp=2,
        mem_mib=512,
        cpu_mhz=1500,
        disks=(
            DiskSpec(POOL / drives[0], "virtio", 0, 3, bootindex=1, shared=True),
            DiskSpec(POOL / drives[1], "ide", 1, 0, media="cdrom", bootindex=0),
            DiskSpec(POOL / drives[2], "scsi", 0, 5),
        ),
        nics=(
            NicSpec("e1000", "52:54:00:00:00:01", tap="ignored0"),
            NicSpec("virtio", "52:54:00:00:00:02", index=4),
        ),
        vnc=VncSpec("127.0.0.1", 7, "secret"),
    )
    assert create_keys(spec, [None, vlan], EXITS) == {
        "name": "web one",
        "cpu": "1500",
        "smp": "2",
        "mem": "512",
        "block:3": drives[0],
        "ide:1:0": drives[1],
        "ide:1:0:media": "cdrom",
        "scsi:0:5": drives[2],
        "boot": "ide:1:0 block:3",
        "shared": drives[0],
        "nic:0:model": "e1000",
        "nic:0:mac": "52:54:00:00:00:01",
        "nic:4:model": "virtio",
        "nic:4:mac": "52:54:00:00:00:02",
        "nic:4:vlan": vlan,
        "vnc": "auto",
        "vnc:password": "secret",
        "callback:exit": EXITS,
    }


def test_keys_of_a_bare_spec_and_what_cannot_be_said() -> None:
    spec = GuestSpec(str(uuid.uuid4()), "bare", 1, 64, 500)
    assert create_keys(spec, [], EXITS) == {
        "name": "bare",
        "cpu": "500",
        "smp": "1",
        "mem": "64",
        "callback:exit": EXITS,
    }
    with pytest.raises(UsageError, match="1 NICs but 0 networks"):
        create_keys(
            GuestSpec(spec.uuid, "n", 1, 64, 500, nics=(NicSpec("e1000", new_mac()),)), [], EXITS
        )
    with pytest.raises(UsageError, match="password"):
        create_keys(GuestSpec(spec.uuid, "v", 1, 64, 500, vnc=VncSpec("127.0.0.1", 1)), [], EXITS)
    qcow = DiskSpec(POOL / str(uuid.uuid4()), "virtio", 0, 0, format="qcow2")
    with pytest.raises(UsageError, match="raw"):
        create_keys(GuestSpec(spec.uuid, "q", 1, 64, 500, disks=(qcow,)), [], EXITS)


_SLOTS = (
    [("ide", b, u) for b in (0, 1) for u in (0, 1)]
    + [("scsi", 0, u) for u in range(8)]
    + [("virtio", 0, n) for n in range(8)]
)


@st.composite
def _specs(draw: st.DrawFn) -> tuple[GuestSpec, list[str | None]]:
    slots = draw(st.lists(st.sampled_from(_SLOTS), unique=True, max_size=6))
    boots = draw(st.permutations(range(len(slots))))
    booted = draw(st.integers(0, len(slots)))
    drives = draw(
        st.lists(st.uuids().map(str), min_size=len(slots), max_size=len(slots), unique=True)
    )
    disks = tuple(
        DiskSpec(
            POOL / drives[i],
            bus,  # type: ignore[arg-type]
            bus_no,
            unit,
            media=draw(st.sampled_from(["disk", "cdrom"])),
            bootindex=boots[i] if boots[i] < booted else None,
            shared=draw(st.booleans()),
        )
        for i, (bus, bus_no, unit) in enumerate(slots)
    )
    indexes = draw(st.lists(st.integers(0, 7), unique=True, max_size=4))
    nics = tuple(
        NicSpec(
            draw(st.sampled_from(["e1000", "rtl8139", "virtio"])),
            f"52:54:00:00:00:{i:02x}",
            index=i,
        )
        for i in indexes
    )
    networks = [draw(st.none() | st.uuids().map(str)) for _ in nics]
    password = draw(st.none() | st.text("abcXYZ019!", min_size=1, max_size=8))
    spec = GuestSpec(
        uuid=str(draw(st.uuids())),
        name=draw(st.text("abc xyz-_09", min_size=1, max_size=20).map(str.strip).filter(bool)),
        smp=draw(st.integers(1, 64)),
        mem_mib=draw(st.integers(32, 262_144)),
        cpu_mhz=draw(st.integers(100, 128_000)),
        disks=disks,
        nics=nics,
        vnc=VncSpec("127.0.0.1", 0, password) if password else None,
    )
    return spec, networks


@settings(max_examples=60, deadline=None)
@given(_specs())
def test_keys_describe_the_spec_to_the_host(case: tuple[GuestSpec, list[str | None]]) -> None:
    """What the host parses from the keys is the guest the manager meant."""
    spec, networks = case
    parsed = parse_server_spec(create_keys(spec, networks, EXITS))
    assert (parsed.name, parsed.cpu, parsed.mem, parsed.smp) == (
        spec.name,
        spec.cpu_mhz,
        spec.mem_mib,
        spec.smp,
    )
    assert not parsed.persistent
    bus = {"ide": Bus.IDE, "scsi": Bus.SCSI, "virtio": Bus.VIRTIO}
    assert {(d.name, d.bus, d.drive, d.media.value) for d in parsed.devices} == {
        (d.name, bus[d.bus], d.image.name, d.media) for d in spec.disks
    }
    booting = sorted((d for d in spec.disks if d.bootindex is not None), key=lambda d: d.bootindex)  # type: ignore[arg-type, return-value]
    assert parsed.boot == tuple(d.name for d in booting)
    assert set(parsed.shared) == {d.image.name for d in spec.disks if d.shared}
    assert [(n.index, n.model, n.mac, n.vlan, n.dhcp) for n in parsed.nics] == [
        (n.slot, NicModel(n.model), n.mac, net, None)
        for n, net in sorted(zip(spec.nics, networks, strict=True), key=lambda p: p[0].slot)
    ]
    assert parsed.vnc_password == (spec.vnc.password if spec.vnc else None)
    assert parsed.callback_exit == EXITS


_counts = st.integers(0, 2**63)


@settings(max_examples=60, deadline=None)
@given(
    st.builds(
        GuestInfo,
        uuid=st.uuids().map(str),
        name=st.text(max_size=20),
        pid=st.integers(1, 2**22),
        status=st.sampled_from(["running", "paused", "prelaunch"]),
        running=st.booleans(),
        disks=st.lists(
            st.builds(
                DiskStats,
                st.text(max_size=12),
                st.text(max_size=40),
                st.booleans(),
                _counts,
                _counts,
                _counts,
                _counts,
            ),
            max_size=3,
        ).map(tuple),
        nics=st.lists(
            st.builds(
                NicStats,
                st.text(max_size=8),
                st.text(max_size=8),
                st.text(max_size=17),
                st.none() | st.text(max_size=15),
                st.none() | _counts,
                st.none() | _counts,
                st.none() | _counts,
                st.none() | _counts,
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.none() | st.builds(VncAddress, st.ip_addresses().map(str), st.integers(5900, 65535)),
)
def test_a_guest_crosses_the_wire_unchanged(info: GuestInfo, vnc: VncAddress | None) -> None:
    guest = RunningGuest(info, vnc)
    assert decode_running_guest(json.loads(json.dumps(encode_running_guest(guest)))) == guest


def _guest_document(**info: object) -> dict[str, object]:
    base = {"uuid": "u", "name": "n", "pid": 1, "status": "running", "running": True}
    return {"info": {**base, "disks": [], "nics": [], **info}, "vnc": None}


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"vnc": None},
        {"info": {"uuid": "u"}, "vnc": None},
        _guest_document(pid=True),
        _guest_document(disks=[{"device": "d"}]),
        _guest_document(nics=[{"device": "nic0", "model": "virtio", "mac": 1}]),
        {**_guest_document(), "vnc": {"ip": "127.0.0.1", "port": "5900"}},
    ],
)
def test_a_malformed_guest_is_the_hosts_failure(document: object) -> None:
    with pytest.raises(FailedError, match="malformed"):
        decode_running_guest(document)


# -- against a real host ------------------------------------------------------------


@dataclass
class Host:
    cloud: Cloud
    pool: Path

    @property
    def url(self) -> str:
        """The manager's URL for the host: admin credentials in the user part."""
        c = self.cloud
        return c.url.replace("http://", f"http://{c.admin_uuid}:{c.admin_secret}@")

    def server_info(self, server: str) -> httpx.Response:
        with self.cloud.admin_client() as admin:
            return admin.get(f"/servers/{server}/info", headers={"accept": "application/json"})


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with scratch_dir("oc-rh-") as scratch:
        pool = scratch / "drives"
        pool.mkdir()
        c = start_cloud(scratch / "var", env={"OVERCAST_DRIVES": str(pool)})
        try:
            yield Host(c, pool)
        finally:
            stop_cloud(c)


@dataclass
class Manager:
    """What a manager holds for one host: the client and the ends it heard."""

    client: RemoteHost
    ends: list[GuestEnd] = field(default_factory=list)


@pytest.fixture
async def manager(host: Host, receiver: Receiver) -> AsyncIterator[Manager]:
    ends: list[GuestEnd] = []

    async def on_exit(end: GuestEnd) -> None:
        ends.append(end)

    client = RemoteHost(host.url, on_exit, exits_url=f"{receiver.base}/exits", timeout=30)
    try:
        yield Manager(client, ends)
    finally:
        for server in await client.running():  # whatever a failed test left
            await client.stop(server)
        await client.close()


def _spec(**kwargs: object) -> GuestSpec:
    base: dict[str, object] = {
        "uuid": str(uuid.uuid4()),
        "name": "remote guest",
        "smp": 1,
        "mem_mib": 64,
        "cpu_mhz": 500,
        "nics": (NicSpec("virtio", new_mac()),),
    }
    return GuestSpec(**{**base, **kwargs})  # type: ignore[arg-type]


async def _status(client: RemoteHost, server: str, want: str) -> RunningGuest:
    """The guest once QEMU reports ``want`` (a resume takes a moment to show)."""
    deadline = time.monotonic() + 5
    while True:
        guest = await client.info(server)
        if guest.info.status == want or time.monotonic() > deadline:
            return guest
        await asyncio.sleep(0.05)


async def test_a_guest_runs_on_the_host_and_obeys(
    host: Host, manager: Manager, receiver: Receiver
) -> None:
    client = manager.client
    spec = _spec()
    started = await client.start(spec, [None])
    server = spec.uuid

    assert started.info.uuid == server and started.info.status == "running"
    assert started.vnc is None
    assert await client.running() == {server}
    assert started.info.pid in qemus_in(host.cloud.data) and alive(started.info.pid)
    on_host = host.server_info(server).json()
    assert on_host["status"] == "active"
    assert on_host["nic:0:mac"] == spec.nics[0].mac and on_host["nic:0:model"] == "virtio"
    assert on_host["persistent"] == "false"
    assert on_host["callback:exit"] == f"{receiver.base}/exits"

    # info is the agent's own view: the same guest and devices as start gave.
    seen = await client.info(server)
    assert (seen.info.uuid, seen.info.name) == (server, "remote guest")
    assert seen.info.pid == started.info.pid
    assert [n.device for n in seen.info.nics] == [n.device for n in started.info.nics] == ["nic0"]
    assert [n.mac for n in seen.info.nics] == [spec.nics[0].mac]
    assert seen.info.nics[0].tap is not None  # the host made its tap
    assert [d.device for d in seen.info.disks] == [d.device for d in started.info.disks]

    with pytest.raises(BusyError):
        await client.start(spec, [None])

    await client.pause(server)
    assert (await _status(client, server, "paused")).info.status == "paused"
    assert host.server_info(server).json()["status"] == "paused"
    await client.resume(server)
    assert (await _status(client, server, "running")).info.running

    await client.update(server, cpu_mhz=900)
    assert host.server_info(server).json()["cpu"] == 900
    await client.update(server, vnc_password="pw")  # no console: accepted, nothing to change
    await client.update(server)

    await client.powerdown(server)  # no OS to obey the button: nothing happens
    await client.reset(server)
    await asyncio.sleep(0.3)
    assert await client.running() == {server} and alive(started.info.pid)
    assert manager.ends == []

    before = time.time()
    await client.stop(server)
    assert [(e.server, e.reason, e.guest_initiated) for e in manager.ends] == [
        (server, "killed", False)
    ]
    assert before <= manager.ends[0].at <= time.time()
    assert await client.running() == set()
    assert host.server_info(server).status_code == 404
    assert not alive(started.info.pid)

    # The host's own report of the end reaches the manager's exits URL.
    (event,) = await asyncio.to_thread(receiver.wait_acknowledged, "/exits", 1)
    assert event["type"] == "server.exit"
    assert event["server"]["server"] == server  # type: ignore[index]
    assert len(manager.ends) == 1


async def test_a_console_is_the_hosts_choice(manager: Manager) -> None:
    client = manager.client
    spec = _spec(nics=(), vnc=VncSpec("127.0.0.1", 0, "secret"))
    started = await client.start(spec, [])
    assert started.vnc is not None and started.vnc.ip == "127.0.0.1"
    assert (await client.info(spec.uuid)).vnc == started.vnc
    await client.update(spec.uuid, vnc_password="other")
    await client.stop(spec.uuid)


def _raw_image(path: Path) -> None:
    """An empty 1 MiB raw image, as a drive of the shared pool."""
    with open(path, "wb") as image:
        image.truncate(1 << 20)


async def test_guests_open_drives_of_the_shared_pool(host: Host, manager: Manager) -> None:
    """A trusted create: the drives are files in the pool and no rows on the
    host; the shared one is opened by two guests at once (QEMU's image lock
    would refuse the second writer otherwise)."""
    client = manager.client
    own, common = str(uuid.uuid4()), str(uuid.uuid4())
    for drive in (own, common):
        _raw_image(host.pool / drive)
    first = _spec(
        nics=(),
        disks=(
            DiskSpec(host.pool / own, "virtio", 0, 0, bootindex=0),
            DiskSpec(host.pool / common, "scsi", 0, 1, shared=True),
        ),
    )
    second = _spec(nics=(), disks=(DiskSpec(host.pool / common, "virtio", 0, 2, shared=True),))
    a = await client.start(first, [])
    b = await client.start(second, [])

    disks = {d.device: (d.image, d.readonly) for d in (await client.info(first.uuid)).info.disks}
    assert disks == {
        "drive-block-0": (str(host.pool / own), False),
        "drive-scsi-0-1": (str(host.pool / common), False),
    }
    assert [(d.device, d.image) for d in b.info.disks] == [
        ("drive-block-2", str(host.pool / common))
    ]
    assert [d.device for d in a.info.disks] == sorted(disks)
    on_host = host.server_info(first.uuid).json()
    assert (on_host["block:0"], on_host["scsi:0:1"], on_host["boot"]) == (own, common, "block:0")

    # The exclusive one is not: QEMU's lock refuses a second writer, and the
    # failed start leaves nothing on the host.
    third = _spec(nics=(), disks=(DiskSpec(host.pool / own, "virtio", 0, 0),))
    with pytest.raises(FailedError, match="lock"):
        await client.start(third, [])
    assert await client.running() == {first.uuid, second.uuid}
    assert host.server_info(third.uuid).status_code == 404

    await client.stop(first.uuid)
    await client.stop(second.uuid)
    assert {e.server for e in manager.ends} == {first.uuid, second.uuid}


async def test_verbs_on_a_guest_the_host_does_not_run(manager: Manager) -> None:
    client = manager.client
    server = str(uuid.uuid4())
    for verb in (
        client.powerdown,
        client.stop,
        client.reset,
        client.pause,
        client.resume,
        client.info,
    ):
        with pytest.raises(MissingError):
            await verb(server)
    with pytest.raises(MissingError):
        await client.update(server, cpu_mhz=700)
    with pytest.raises(MissingError):
        await client.info("../users/list")
    assert manager.ends == []


async def test_hot_plug_is_not_there_yet(manager: Manager) -> None:
    client = manager.client
    server = str(uuid.uuid4())
    with pytest.raises(BusyError, match="not supported yet"):
        await client.attach_disk(server, _disk(str(uuid.uuid4()), 0, bus="virtio", bus_no=0))
    with pytest.raises(BusyError, match="not supported yet"):
        await client.detach_disk(server, "block:0")
    with pytest.raises(BusyError, match="not supported yet"):
        await client.attach_nic(server, NicSpec("virtio", new_mac(), index=1), None)
    with pytest.raises(BusyError, match="not supported yet"):
        await client.detach_nic(server, 1)


async def test_a_failed_start_leaves_nothing(host: Host, manager: Manager) -> None:
    client = manager.client
    spec = _spec(mem_mib=262_144)  # more than the host has, or the admin may use
    with pytest.raises((FullError, QuotaError)):
        await client.start(spec, [None])
    with pytest.raises(MissingError):
        await client.start(
            _spec(disks=(_disk(str(uuid.uuid4()), 0, bus="virtio", bus_no=0),)), [None]
        )
    assert await client.running() == set()
    assert host.server_info(spec.uuid).status_code == 404


class _LosingReplies(httpx.AsyncBaseTransport):
    """The network, except that the replies to some paths are lost after
    the host acted on the request (a timeout, as the client sees it)."""

    def __init__(self, *paths: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths = set(paths)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path in self.paths:
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("the reply was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("lost", ["/servers/{}/create", "/guests/{}/info"])
async def test_a_start_whose_reply_is_lost_is_undone(host: Host, lost: str) -> None:
    """The host started the guest but the manager cannot know: the guest
    must not run for nobody."""
    ends: list[GuestEnd] = []

    async def on_exit(end: GuestEnd) -> None:
        ends.append(end)

    spec = _spec()
    client = RemoteHost(
        host.url, on_exit, exits_url=EXITS, transport=_LosingReplies(lost.format(spec.uuid))
    )
    try:
        with pytest.raises(FailedError, match="unreachable: the reply was lost"):
            await client.start(spec, [None])
        assert await client.running() == set()
        assert host.server_info(spec.uuid).status_code == 404
        assert ends == []
    finally:
        await client.close()


async def test_a_dead_host_fails_quickly_without_credentials(host: Host) -> None:
    async def on_exit(end: GuestEnd) -> None:
        raise AssertionError(end)

    secret = host.cloud.admin_secret
    dead = RemoteHost(
        f"http://{host.cloud.admin_uuid}:{secret}@127.0.0.1:{free_port()}",
        on_exit,
        exits_url=EXITS,
        timeout=5,
    )
    try:
        began = time.monotonic()
        for call in (dead.running(), dead.info(str(uuid.uuid4())), dead.start(_spec(), [None])):
            with pytest.raises(FailedError, match="unreachable") as caught:
                await call
            text = str(caught.value)
            assert secret not in text and host.cloud.admin_uuid not in text
        assert time.monotonic() - began < 3
    finally:
        await dead.close()


async def test_wrong_credentials_are_refused(host: Host) -> None:
    async def on_exit(end: GuestEnd) -> None:
        raise AssertionError(end)

    c = host.cloud
    for url in (
        c.url.replace("http://", f"http://{c.admin_uuid}:wrong@"),
        c.url,  # none at all
    ):
        client = RemoteHost(url, on_exit, exits_url=EXITS)
        try:
            with pytest.raises(AuthError) as caught:
                await client.running()
            assert c.admin_secret not in str(caught.value)
            with pytest.raises(AuthError):
                await client.start(_spec(), [None])
        finally:
            await client.close()
    with pytest.raises(UsageError):
        RemoteHost("ftp://10.0.0.1/", on_exit, exits_url=EXITS)


def test_guests_are_for_admins_only(host: Host) -> None:
    with new_user(host.cloud) as user:
        for path in ("/guests/list", f"/guests/{uuid.uuid4()}/info"):
            r = user.get(path)
            assert r.status_code == 404 and r.headers["x-elastic-error"] == "missing"
    with host.cloud.admin_client() as admin:
        r = admin.get("/guests/list")
        assert r.status_code == 200
        r = admin.get(f"/guests/{uuid.uuid4()}/info")
        assert r.status_code == 404 and r.headers["x-elastic-error"] == "missing"
