"""apache-libcloud's ElasticHosts driver, unchanged, against a real ``overcast serve``.

libcloud is the client most ElasticHosts users had; its driver speaks JSON
only, lists images from a table of its own (so the test guest is registered
under the first UUID of that table) and sizes from another (drives of
160 GB and more: sparse files here), and creates a node the ElasticHosts
way: a drive, ``/image/LIB/gunzip`` polled until done, then a server with
``nic:0:dhcp auto`` (hence an IP pool and an IP for the user). Nothing here
works around the driver: what it needs from us is what a user would need.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from libcloud.compute.drivers.elastichosts import STANDARD_DRIVES, ElasticHostsNodeDriver
from libcloud.compute.types import NodeState

from cloud import Cloud, start_cloud, stop_cloud

ROOT = Path(__file__).resolve().parent.parent
GUEST_GZ = ROOT / "build" / "guest" / "guest.img.gz"
#: The first image of libcloud's table: our guest stands in for it.
IMAGE = next(iter(STANDARD_DRIVES))
MARKER = "OVERCAST-GUEST-UP"
#: A TCG guest booting on a loaded two-core machine.
BOOT_TIMEOUT = 90.0


def _keys(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


@pytest.fixture(scope="module")
def own_cloud() -> Iterator[Cloud]:
    """A cloud of this module's own: it adds an address pool, which is global.

    Not under pytest's ``tmp_path``: QMP sockets live in ``DATA/run/<uuid>/``
    and a unix socket path holds at most 107 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="ocl-", dir="/tmp") as tmp:
        c = start_cloud(Path(tmp) / "var")
        try:
            for args in (
                ("drive", "import-standard", str(GUEST_GZ), "--name", "guest", "--uuid", IMAGE),
                ("ip", "add-pool", "192.0.2.0/24"),
            ):
                done = c.overcast("admin", *args)
                assert done.returncode == 0, done.stderr
            yield c
        finally:
            stop_cloud(c)


@pytest.fixture
def account(own_cloud: Cloud) -> Iterator[tuple[str, str, str]]:
    """A new user with one IP: ``(uuid, secret, ip)``."""
    with own_cloud.admin_client() as a:
        r = a.post("/users/create", content="name libcloud\n")
        assert r.status_code == 200, r.text
        keys = _keys(r.text)
    with own_cloud.client(keys["user"], keys["secret"]) as c:
        r = c.post("/resources/ip/create")
        assert r.status_code == 200, r.text
        ip = _keys(r.text)["resource"]
        yield keys["user"], keys["secret"], ip
        for server in c.get("/servers/list").text.split():
            c.post(f"/servers/{server}/destroy")


def _driver(c: Cloud, uuid: str, secret: str) -> ElasticHostsNodeDriver:
    port = httpx.URL(c.url).port
    return ElasticHostsNodeDriver(uuid, secret, secure=False, host="127.0.0.1", port=port)


def _serial(c: Cloud, server: str) -> str:
    path = c.data / "run" / server / "serial.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def test_sizes_and_images(own_cloud: Cloud, account: tuple[str, str, str]) -> None:
    driver = _driver(own_cloud, *account[:2])
    sizes = driver.list_sizes()
    assert sizes and all(s.ram > 0 and s.disk > 0 and s.cpu > 0 for s in sizes)
    images = driver.list_images()
    assert IMAGE in [i.id for i in images]
    # The table's UUID is a real library drive here, readable by the user.
    with own_cloud.client(*account[:2]) as c:
        assert IMAGE in c.get("/drives/list/standard").text.split()


def test_node_lifecycle(own_cloud: Cloud, account: tuple[str, str, str]) -> None:
    uuid, secret, ip = account
    driver = _driver(own_cloud, uuid, secret)
    size = min(driver.list_sizes(), key=lambda s: s.ram)
    image = next(i for i in driver.list_images() if i.id == IMAGE)

    node = driver.create_node(name="lc", size=size, image=image)
    assert node.state == NodeState.RUNNING
    assert node.public_ips == [ip]
    drive = node.extra["ide:0:0"]
    assert node.extra["mem"] == size.ram

    listed = {n.id: n for n in driver.list_nodes()}
    assert list(listed) == [node.id]
    assert listed[node.id].state == NodeState.RUNNING
    assert listed[node.id].public_ips == [ip]
    pid = int((own_cloud.data / "run" / node.id / "qemu.pid").read_text())

    assert driver.reboot_node(node) is True
    assert int((own_cloud.data / "run" / node.id / "qemu.pid").read_text()) == pid
    assert [n.state for n in driver.list_nodes()] == [NodeState.RUNNING]

    # The ACPI power button: the guest powers off once it is up, and the
    # (non-persistent) server is gone with its claim.
    _until(lambda: MARKER in _serial(own_cloud, node.id), BOOT_TIMEOUT, "the guest to boot")
    assert driver.ex_shutdown_node(node) is True
    _until(lambda: driver.list_nodes() == [], 30, "the guest to power off")
    assert driver.ex_destroy_drive(drive) is True

    # destroy: at once, whatever the guest does; its drive is free to destroy after.
    second = driver.create_node(name="lc2", size=size, image=image)
    assert [n.id for n in driver.list_nodes()] == [second.id]
    assert driver.destroy_node(second) is True
    assert driver.list_nodes() == []
    assert driver.ex_destroy_drive(second.extra["ide:0:0"]) is True
    with own_cloud.client(uuid, secret) as c:
        assert c.get("/drives/list").text.split() == []
