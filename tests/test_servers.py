"""``/servers/…`` on real QEMU guests: synchronous create, bad input, races, set.

Every server here is a real ``qemu-system-x86_64`` started by the cloud's
host agent; the tests look at the process table (a QEMU whose command line
names the server's run directory), the store through the API, and, where a
guest OS matters, the serial console. None of these tests waits for a guest
OS to boot: create answers before that, which is the point of the first test.

The helpers at the top are shared with ``test_server_exits.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid as _uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, new_user

#: The test guest as a library drive, registered by the ``guest`` fixture.
GUEST = "6f766572-6361-4573-a774-67756573740a"
GUEST_IMAGE = Path(__file__).resolve().parent.parent / "build" / "guest" / "guest.img.gz"
MARKER = b"OVERCAST-GUEST-UP"
#: What a create may take: QEMU started, devices confirmed, never the OS.
CREATE_LIMIT = 3.0


# -- helpers (also used by test_server_exits.py) ----------------------------


def records(body: str) -> list[dict[str, str]]:
    return [
        {k: v for k, _, v in (line.partition(" ") for line in block.split("\n"))}
        for block in body.strip("\n").split("\n\n")
        if block
    ]


def keys_text(keys: dict[str, str]) -> str:
    return "".join(f"{k} {v}\n" for k, v in keys.items())


def assert_error(r: httpx.Response, status: int, kind: str, case: object = None) -> None:
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.headers["x-elastic-error"] == kind, (case, r.headers)
    assert r.text.strip(), case


def rundir(cloud: Cloud, server: str) -> Path:
    return cloud.data / "run" / server


def qemu_pids(cloud: Cloud, server: str) -> list[int]:
    """The QEMU processes running for ``server``, from ``/proc`` alone."""
    needle = str(rundir(cloud, server)).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in cmdline and needle in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def all_qemu_pids(cloud: Cloud) -> set[int]:
    """Every QEMU of this cloud (any server)."""
    needle = str(cloud.data / "run").encode()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and needle in cmdline:
                pids.add(int(entry))
    return pids


def the_qemu(cloud: Cloud, server: str) -> int:
    """The guest's QEMU. Create answers once the daemon runs; QEMU's first
    process (``-daemonize``) may take a moment longer to exit."""
    deadline = time.monotonic() + 2
    while len(pids := qemu_pids(cloud, server)) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pids) == 1, (server, pids)
    return pids[0]


def serial(cloud: Cloud, server: str) -> bytes:
    try:
        return (rundir(cloud, server) / "serial.log").read_bytes()
    except FileNotFoundError:
        return b""


def wait_for(what: str, check: object, timeout: float, step: float = 0.02) -> float:
    """Poll ``check()`` until true; the seconds it took."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(step)
    return time.monotonic() - start


def wait_marker(cloud: Cloud, server: str, count: int = 1, timeout: float = 60) -> float:
    return wait_for(
        f"{MARKER.decode()} x{count} from {server}",
        lambda: serial(cloud, server).count(MARKER) >= count,
        timeout,
        0.05,
    )


def new_drive(http: httpx.Client, size: str = "1M", name: str = "disk") -> str:
    r = http.post("/drives/create", content=f"name {name}\nsize {size}\n")
    assert r.status_code == 200, r.text
    return records(r.text)[0]["drive"]


def drive_info(http: httpx.Client, drive: str) -> dict[str, str]:
    r = http.get(f"/drives/{drive}/info")
    assert r.status_code == 200, r.text
    return records(r.text)[0]


def start_imaging(http: httpx.Client, drive: str) -> None:
    r = http.post(f"/drives/{drive}/image/{GUEST}/gunzip")
    assert r.status_code == 204, r.text


def wait_imaged(http: httpx.Client, drive: str, timeout: float = 60) -> None:
    wait_for(f"imaging of {drive}", lambda: "imaging" not in drive_info(http, drive), timeout)


def boot_drive(http: httpx.Client) -> str:
    """A drive of the caller's with the test guest on it."""
    drive = new_drive(http, "64M", "boot")
    start_imaging(http, drive)
    wait_imaged(http, drive)
    return drive


def poweroff_drive(http: httpx.Client, seconds: int) -> str:
    """A drive that tells the test guest to power off ``seconds`` after boot."""
    drive = new_drive(http, "1M", "poweroff")
    r = http.post(f"/drives/{drive}/write", content=f"overcast-poweroff {seconds}\n".encode())
    assert r.status_code == 204, r.text
    return drive


def server_keys(name: str, *drives: str, **extra: str) -> dict[str, str]:
    """A small server booting from its first drive (``ide:0:0``, then ``ide:0:1``...)."""
    keys = {"name": name, "cpu": "500", "mem": "128"}
    slots = ["ide:0:0", "ide:0:1", "ide:1:0", "ide:1:1"]
    for slot, drive in zip(slots, drives, strict=False):
        keys[slot] = drive
    if drives:
        keys["boot"] = "ide:0:0"
    keys.update({k.replace("_", ":"): v for k, v in extra.items()})
    return keys


def create(http: httpx.Client, keys: dict[str, str], path: str = "/servers/create") -> str:
    r = http.post(path, content=keys_text(keys))
    assert r.status_code == 200, r.text
    return records(r.text)[0]["server"]


def listed(http: httpx.Client) -> list[str]:
    r = http.get("/servers/list")
    assert r.status_code == 200, r.text
    return r.text.split()


def destroy(http: httpx.Client, server: str) -> None:
    """Clean-up: destroy, whatever state the server is in (or is gone)."""
    r = http.post(f"/servers/{server}/destroy")
    assert r.status_code in (204, 404), r.text


@pytest.fixture(scope="module")
def guest(cloud: Cloud) -> str:
    """The test guest registered as a library drive (as ``make run`` does)."""
    assert GUEST_IMAGE.exists(), f"{GUEST_IMAGE} is missing: run make guest"
    done = cloud.overcast(
        "admin",
        "drive",
        "import-standard",
        str(GUEST_IMAGE),
        "--name",
        "guest",
        "--uuid",
        GUEST,
        "--exist-ok",
    )
    assert done.returncode == 0, done.stderr
    return GUEST


class Servers:
    """Servers a test starts, all destroyed at its end."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.made: list[str] = []

    def create(self, keys: dict[str, str], path: str = "/servers/create") -> str:
        server = create(self.http, keys, path)
        self.made.append(server)
        return server

    def cleanup(self) -> None:
        for server in self.made:
            destroy(self.http, server)


@pytest.fixture
def servers(user: httpx.Client) -> Iterator[Servers]:
    made = Servers(user)
    try:
        yield made
    finally:
        made.cleanup()


# -- 1. create is synchronous ------------------------------------------------


def test_create_replies_once_qemu_runs_not_the_guest_os(
    cloud: Cloud, guest: str, user: httpx.Client, servers: Servers
) -> None:
    boot = boot_drive(user)
    keys = server_keys("sync", boot, nic_0_model="e1000")

    start = time.monotonic()
    r = user.post("/servers/create", content=keys_text(keys))
    took = time.monotonic() - start
    assert r.status_code == 200, r.text
    info = records(r.text)[0]
    server = info["server"]
    servers.made.append(server)
    # The reply comes when QEMU runs: the process exists right now...
    assert the_qemu(cloud, server)
    assert info["status"] == "active"
    assert int(info["started"]) <= time.time() + 1
    assert info["ide:0:0"] == boot and info["boot"] == "ide:0:0"
    assert info["nic:0:model"] == "e1000"
    assert len(info["nic:0:mac"].split(":")) == 6
    # ...and not after the guest OS: create is far quicker than a boot.
    assert took < CREATE_LIMIT, took
    print(f"create-to-200 (text): {took * 1000:.0f} ms")
    assert MARKER not in serial(cloud, server)
    # The drive is claimed by it.
    assert drive_info(user, boot)["claimed"] == f"{server}:ide:0:0"

    # info and list, text and JSON.
    assert server in listed(user)
    j = user.get("/servers/list", headers={"Accept": "application/json"})
    assert {"server": server} in j.json()
    one = user.get(f"/servers/{server}/info", headers={"Accept": "application/json"}).json()
    assert one["server"] == server and one["status"] == "active"
    assert one["cpu"] == 500 and one["mem"] == 128 and one["smp"] == 1
    assert isinstance(one["started"], int)
    text = records(user.get(f"/servers/{server}/info").text)[0]
    assert text["name"] == "sync" and text["status"] == "active"
    every = user.get("/servers/info", headers={"Accept": "application/json"}).json()
    assert [s["server"] for s in every] == [server]

    # JSON input, JSON output, numbers as numbers.
    start = time.monotonic()
    r = user.post(
        "/servers/create",
        json={"name": "json", "cpu": 400, "mem": 64, "persistent": False},
        headers={"Accept": "application/json"},
    )
    took = time.monotonic() - start
    assert r.status_code == 200, r.text
    body = r.json()
    servers.made.append(body["server"])
    assert body["status"] == "active" and body["mem"] == 64 and body["persistent"] == "false"
    assert the_qemu(cloud, body["server"])
    assert took < CREATE_LIMIT, took
    print(f"create-to-200 (JSON, no drive): {took * 1000:.0f} ms")
    assert sorted(listed(user)) == sorted([server, body["server"]])


# -- 2. bad input: a clear error, nothing started -----------------------------


def test_bad_input_changes_nothing(
    cloud: Cloud, guest: str, user: httpx.Client, servers: Servers
) -> None:
    free = new_drive(user, name="free")
    held = new_drive(user, name="held")
    mac = "52:54:00:aa:bb:01"
    running = servers.create(server_keys("holder", held, nic_0_model="virtio", nic_0_mac=mac))
    with new_user(cloud, "other") as other:
        foreign = new_drive(other, name="foreign")
    imaging = new_drive(user, "64M", "imaging")

    base = {"name": "bad", "cpu": "500", "mem": "64"}
    cases: list[tuple[dict[str, str], int, str]] = [
        ({**base, "ide:9:0": free}, 400, "usage"),
        ({**base, "floppy:0": free}, 400, "usage"),
        ({**base, "ide:2:0": free}, 400, "usage"),
        ({**base, "block:8": free}, 400, "usage"),
        ({**base, "scsi:1:0": free}, 400, "usage"),
        ({**base, "nic:0:model": "ne2000"}, 400, "usage"),
        ({"cpu": "500", "mem": "64", "ide:0:0": free}, 400, "usage"),
        ({"name": "bad", "mem": "64", "ide:0:0": free}, 400, "usage"),
        ({"name": "bad", "cpu": "500", "ide:0:0": free}, 400, "usage"),
        ({**base, "mem": "8", "ide:0:0": free}, 400, "usage"),
        ({**base, "mem": "10000000", "ide:0:0": free}, 400, "usage"),
        ({**base, "cpu": "1", "ide:0:0": free}, 400, "usage"),
        ({**base, "cpu": "lots", "ide:0:0": free}, 400, "usage"),
        ({**base, "ide:0:0": free, "ide:0:1": free}, 400, "usage"),
        ({**base, "ide:0:0": free, "boot": "ide:1:0"}, 400, "usage"),
        ({**base, "ide:0:0": "not-a-uuid"}, 400, "usage"),
        ({**base, "ide:0:0": free, "ide:0:1": foreign}, 404, "missing"),
        ({**base, "ide:0:0": free, "block:0": str(_uuid.uuid4())}, 404, "missing"),
        ({**base, "ide:0:0": free, "nic:0:model": "e1000", "nic:0:vlan": str(_uuid.uuid4())},
         404, "missing"),
        ({**base, "ide:0:0": free, "nic:0:model": "e1000", "nic:0:mac": mac}, 409, "busy"),
        ({**base, "ide:0:0": free, "ide:0:1": held}, 409, "busy"),
    ]  # fmt: skip
    before_pids = all_qemu_pids(cloud)
    for keys, status, kind in cases:
        r = user.post("/servers/create", content=keys_text(keys))
        assert_error(r, status, kind, keys)
        r = user.post("/servers/create/stopped", content=keys_text(keys))
        if status != 409:  # a stopped server claims nothing: only 409s may pass
            assert_error(r, status, kind, keys)
        elif r.status_code == 200:
            destroy(user, records(r.text)[0]["server"])

    # A drive being imaged is busy (the job runs ~1 s; the check takes ms).
    start_imaging(user, imaging)
    r = user.post("/servers/create", content=keys_text({**base, "ide:0:0": imaging}))
    assert_error(r, 409, "busy", "imaging")
    assert "imag" in r.text

    # Nothing was started, nothing stored, nothing claimed.
    assert all_qemu_pids(cloud) == before_pids
    assert listed(user) == [running]
    assert "claimed" not in drive_info(user, free)
    assert drive_info(user, held)["claimed"] == f"{running}:ide:0:0"
    assert records(user.get(f"/servers/{running}/info").text)[0]["nic:0:mac"] == mac
    wait_imaged(user, imaging)
    assert "claimed" not in drive_info(user, imaging)


def test_mac_may_repeat_on_another_network(
    cloud: Cloud, user: httpx.Client, servers: Servers
) -> None:
    """The MAC clash is per network: the same MAC on a VLAN is fine."""
    mac = "52:54:00:aa:bb:02"
    first = servers.create({"name": "pub", "cpu": "200", "mem": "64", "nic:0:model": "e1000",
                            "nic:0:mac": mac})  # fmt: skip
    r = user.post("/resources/vlan/create", content="name lan\n")
    assert r.status_code == 200, r.text
    vlan = records(r.text)[0]["resource"]
    second = servers.create({"name": "lan", "cpu": "200", "mem": "64", "nic:0:model": "e1000",
                             "nic:0:mac": mac, "nic:0:vlan": vlan})  # fmt: skip
    assert the_qemu(cloud, first) != the_qemu(cloud, second)
    info = records(user.get(f"/servers/{second}/info").text)[0]
    assert info["nic:0:vlan"] == vlan and info["nic:0:mac"] == mac


# -- 3. concurrency -----------------------------------------------------------


def test_twenty_creates_race_for_one_exclusive_drive(
    cloud: Cloud, user: httpx.Client, servers: Servers
) -> None:
    drive = new_drive(user, name="contested")
    before = all_qemu_pids(cloud)

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=cloud.url, auth=user.auth, timeout=60, limits=httpx.Limits(max_connections=20)
        ) as client:
            body = keys_text({"name": "racer", "cpu": "200", "mem": "64", "ide:0:0": drive})
            return await asyncio.gather(
                *(client.post("/servers/create", content=body) for _ in range(20))
            )

    replies = asyncio.run(race())
    won = [r for r in replies if r.status_code == 200]
    servers.made.extend(records(r.text)[0]["server"] for r in won)
    assert len(won) == 1, [(r.status_code, r.text) for r in replies]
    for r in replies:
        if r.status_code != 200:
            assert_error(r, 409, "busy")
    winner = records(won[0].text)[0]["server"]
    assert listed(user) == [winner]
    assert all_qemu_pids(cloud) - before == {the_qemu(cloud, winner)}
    assert drive_info(user, drive)["claimed"] == f"{winner}:ide:0:0"


def test_shared_drive_attached_by_two_running_servers(
    cloud: Cloud, user: httpx.Client, servers: Servers
) -> None:
    drive = new_drive(user, name="shared")
    r = user.post(f"/drives/{drive}/set", content="claim:type shared\n")
    assert r.status_code == 200, r.text
    a = servers.create({"name": "a", "cpu": "200", "mem": "64", "block:0": drive})
    b = servers.create({"name": "b", "cpu": "200", "mem": "64", "scsi:0:1": drive})
    assert the_qemu(cloud, a) != the_qemu(cloud, b)
    claimed = drive_info(user, drive)["claimed"].split()
    assert sorted(claimed) == sorted([f"{a}:block:0", f"{b}:scsi:0:1"])
    # Still shared only with itself: an exclusive drive next to it is not.
    excl = new_drive(user, name="excl")
    servers.create({"name": "c", "cpu": "200", "mem": "64", "block:0": drive, "block:1": excl})
    r = user.post(
        "/servers/create",
        content=keys_text({"name": "d", "cpu": "200", "mem": "64", "block:0": excl}),
    )
    assert_error(r, 409, "busy")


# -- 5. set --------------------------------------------------------------------


def test_set_while_running_and_stopped(cloud: Cloud, user: httpx.Client, servers: Servers) -> None:
    server = servers.create({"name": "before", "cpu": "200", "mem": "64", "persistent": "true"})
    pid = the_qemu(cloud, server)

    r = user.post(f"/servers/{server}/set", content="name after\ntags web db\n")
    assert r.status_code == 200, r.text
    info = records(r.text)[0]
    assert info["name"] == "after" and info["tags"] == "web db" and info["status"] == "active"
    assert records(user.get(f"/servers/{server}/info").text)[0]["name"] == "after"

    r = user.post(f"/servers/{server}/set", content="mem 96\n")
    assert_error(r, 409, "busy")
    assert "mem" in r.text
    # Echoing info back unchanged is not a change.
    r = user.post(f"/servers/{server}/set", content=user.get(f"/servers/{server}/info").text)
    assert r.status_code == 200, r.text
    r = user.post(f"/servers/{server}/set", content="mem 4\n")
    assert_error(r, 409, "busy")  # running wins over the range: either way refused
    assert qemu_pids(cloud, server) == [pid]

    r = user.post(f"/servers/{server}/stop")
    assert r.status_code == 204, r.text
    assert qemu_pids(cloud, server) == []
    r = user.post(f"/servers/{server}/set", content="mem 4\n")
    assert_error(r, 400, "usage")
    r = user.post(f"/servers/{server}/set", content="mem 96\n")
    assert r.status_code == 200, r.text
    assert records(r.text)[0]["mem"] == "96"
    assert records(r.text)[0]["status"] == "stopped"

    r = user.post(f"/servers/{server}/start")
    assert r.status_code == 200, r.text
    assert records(r.text)[0]["status"] == "active"
    cmdline = Path(f"/proc/{the_qemu(cloud, server)}/cmdline").read_bytes().split(b"\0")
    assert b"96" in cmdline[cmdline.index(b"-m") + 1], cmdline


def test_set_nics_of_a_stopped_server(cloud: Cloud, user: httpx.Client, servers: Servers) -> None:
    """A stopped server's NICs change with ``set`` (MACs kept) and run so."""
    server = servers.create(
        {"name": "nics", "cpu": "200", "mem": "64", "nic:0:model": "e1000"},
        "/servers/create/stopped",
    )
    mac = records(user.get(f"/servers/{server}/info").text)[0]["nic:0:mac"]
    r = user.post(f"/servers/{server}/set", content="nic:0:model rtl8139\nnic:1:model virtio\n")
    assert r.status_code == 200, r.text
    info = records(r.text)[0]
    assert info["nic:0:model"] == "rtl8139" and info["nic:0:mac"] == mac
    assert info["nic:1:model"] == "virtio" and info["nic:1:mac"] != mac
    r = user.post(f"/servers/{server}/start")
    assert r.status_code == 200, r.text
    cmdline = Path(f"/proc/{the_qemu(cloud, server)}/cmdline").read_bytes()
    assert b"rtl8139" in cmdline and b"virtio-net-pci" in cmdline and mac.encode() in cmdline
    r = user.post(f"/servers/{server}/set", content="nic:1:model e1000\n")
    assert_error(r, 409, "busy")


def test_unknown_and_foreign_servers_are_missing(cloud: Cloud, user: httpx.Client) -> None:
    with new_user(cloud, "owner") as owner:
        theirs = create(owner, {"name": "theirs", "cpu": "200", "mem": "64"})
        try:
            for server in (theirs, str(_uuid.uuid4())):
                for verb in ("info", "set", "start", "stop", "shutdown", "reset", "destroy"):
                    r = user.post(f"/servers/{server}/{verb}", content="name x\n")
                    assert_error(r, 404, "missing", verb)
            assert the_qemu(cloud, theirs)
            assert records(owner.get(f"/servers/{theirs}/info").text)[0]["name"] == "theirs"
        finally:
            destroy(owner, theirs)
    r = user.post("/servers/not-a-uuid/info")
    assert r.status_code in (400, 404), r.text
    r = user.get("/servers/create")
    assert_error(r, 405, "method")
    assert json.loads(user.get("/servers/list", headers={"Accept": "application/json"}).text) == []
