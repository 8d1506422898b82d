"""How servers end, on real guests: power-off from inside, ``shutdown``,
``stop``, ``destroy``, ``reset``, persistent servers and ``create/stopped``.

The guests that must boot their OS (to power themselves off, to obey the
ACPI button, to show a reset) are started together by one module fixture,
so their boots overlap; the other tests need only QEMU running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from cloud import Cloud, new_user
from test_servers import (
    MARKER,
    Servers,
    destroy,
    drive_info,
    listed,
    new_drive,
    poweroff_drive,
    qemu_pids,
    records,
    serial,
    server_keys,
    start_imaging,
    the_qemu,
    wait_for,
    wait_imaged,
    wait_marker,
)
from test_servers import guest as guest

#: A non-persistent server's end is processed within this of QEMU's end
#: (API.md: "within a second"; a little slack for this loaded machine).
END_LIMIT = 1.5
#: The self power-off delay written on the power-off drives.
SELF_OFF = 2


def status(http: httpx.Client, server: str) -> str:
    r = http.get(f"/servers/{server}/info")
    assert r.status_code == 200, r.text
    return records(r.text)[0]["status"]


def wait_qemu_gone(cloud: Cloud, server: str, timeout: float = 60) -> float:
    """Wait until no QEMU runs for ``server``; when (monotonic) it was seen gone."""
    wait_for(f"the QEMU of {server} to end", lambda: not qemu_pids(cloud, server), timeout, 0.01)
    return time.monotonic()


def assert_gone_soon(cloud: Cloud, http: httpx.Client, server: str, drives: list[str]) -> float:
    """After QEMU ended: the server leaves every list and lets go of its drives
    within :data:`END_LIMIT`. Returns how long that took."""
    ended = wait_qemu_gone(cloud, server)
    took = wait_for(f"{server} to leave the list", lambda: server not in listed(http), END_LIMIT)
    took = time.monotonic() - ended
    r = http.get(f"/servers/{server}/info")
    assert r.status_code == 404, r.text
    assert all(s["server"] != server for s in records(http.get("/servers/info").text))
    for drive in drives:
        assert "claimed" not in drive_info(http, drive), drive
    assert not (cloud.data / "run" / server).exists()
    return took


@dataclass
class Fleet:
    """Guests booted together at the start of the module."""

    http: httpx.Client
    made: Servers
    drives: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def fleet(cloud: Cloud, guest: str) -> Iterator[Fleet]:
    with new_user(cloud, "fleet") as http:
        made = Servers(http)
        try:
            plan = {
                "selfoff": ({}, SELF_OFF),
                "button": ({}, None),
                "reset": ({}, None),
                "persistent": ({"persistent": "true"}, SELF_OFF),
            }
            boots = {name: new_drive(http, "64M", f"boot-{name}") for name in plan}
            for drive in boots.values():
                start_imaging(http, drive)
            for drive in boots.values():
                wait_imaged(http, drive)
            fleet = Fleet(http, made)
            for name, (extra, off) in plan.items():
                drives = [boots[name]] + ([poweroff_drive(http, off)] if off else [])
                fleet.drives[name] = drives
                fleet.created[name] = time.monotonic()
                # A whole core of CPU time (2000 MHz): the OS boots under TCG.
                keys = server_keys(name, *drives, cpu="2000", **extra)
                fleet.ids[name] = made.create(keys)
                fleet.pids[name] = the_qemu(cloud, fleet.ids[name])
            yield fleet
        finally:
            made.cleanup()


def test_guest_power_off_deletes_the_server(cloud: Cloud, fleet: Fleet) -> None:
    server = fleet.ids["selfoff"]
    assert the_qemu(cloud, server)
    seen = b""

    def ended() -> bool:
        nonlocal seen
        seen = serial(cloud, server) or seen
        return not qemu_pids(cloud, server)

    wait_for("the guest to power itself off", ended, 90, 0.01)
    assert MARKER in seen
    assert f"OVERCAST-POWEROFF-IN {SELF_OFF}".encode() in seen
    assert b"OVERCAST-POWERING-OFF timer" in seen
    took = assert_gone_soon(cloud, fleet.http, server, fleet.drives["selfoff"])
    print(f"guest power-off processed {took * 1000:.0f} ms after QEMU ended")


def test_shutdown_presses_the_power_button(cloud: Cloud, fleet: Fleet) -> None:
    server = fleet.ids["button"]
    boot = wait_marker(cloud, server, timeout=90)
    print(f"boot-to-marker: {time.monotonic() - fleet.created['button']:.1f} s after create")
    assert boot >= 0
    r = fleet.http.post(f"/servers/{server}/shutdown")
    assert r.status_code == 204, r.text
    took = assert_gone_soon(cloud, fleet.http, server, fleet.drives["button"])
    print(f"shutdown exit processed {took * 1000:.0f} ms after QEMU ended")


def test_reset_reboots_the_same_qemu(cloud: Cloud, fleet: Fleet) -> None:
    server = fleet.ids["reset"]
    wait_marker(cloud, server, timeout=90)
    pid = the_qemu(cloud, server)
    r = fleet.http.post(f"/servers/{server}/reset")
    assert r.status_code == 204, r.text
    wait_marker(cloud, server, count=2, timeout=90)
    assert qemu_pids(cloud, server) == [pid]
    assert status(fleet.http, server) == "active"
    assert server in listed(fleet.http)


def test_persistent_server_stops_and_starts_again(cloud: Cloud, fleet: Fleet) -> None:
    server = fleet.ids["persistent"]
    http = fleet.http
    first = fleet.pids["persistent"]
    ended = wait_qemu_gone(cloud, server, 90)
    wait_for("status stopped", lambda: status(http, server) == "stopped", END_LIMIT)
    assert time.monotonic() - ended < END_LIMIT
    assert server in listed(http)
    for drive in fleet.drives["persistent"]:
        assert "claimed" not in drive_info(http, drive)
    info = records(http.get(f"/servers/{server}/info").text)[0]
    assert "vnc:port" not in info and info["persistent"] == "true"
    for verb in ("stop", "shutdown", "reset"):
        r = http.post(f"/servers/{server}/{verb}")
        assert r.status_code == 409, (verb, r.text)

    r = http.post(f"/servers/{server}/start")
    assert r.status_code == 200, r.text
    assert records(r.text)[0]["status"] == "active"
    second = the_qemu(cloud, server)
    assert second != first
    assert drive_info(http, fleet.drives["persistent"][0])["claimed"] == f"{server}:ide:0:0"
    r = http.post(f"/servers/{server}/start")
    assert r.status_code == 409, r.text

    r = http.post(f"/servers/{server}/stop")
    assert r.status_code == 204, r.text
    assert qemu_pids(cloud, server) == []
    assert status(http, server) == "stopped"


def test_stop_ends_at_once(cloud: Cloud, user: httpx.Client, servers: Servers) -> None:
    drive = new_drive(user)
    server = servers.create(server_keys("stop", drive))
    assert the_qemu(cloud, server)
    r = user.post(f"/servers/{server}/stop")
    assert r.status_code == 204, r.text
    # Gone when the reply comes, not later.
    assert qemu_pids(cloud, server) == []
    assert server not in listed(user)
    assert "claimed" not in drive_info(user, drive)
    r = user.post(f"/servers/{server}/stop")
    assert r.status_code == 404, r.text


def test_destroy_ends_and_deletes_but_keeps_drives(
    cloud: Cloud, user: httpx.Client, servers: Servers
) -> None:
    drive = new_drive(user)
    keep = servers.create({**server_keys("keep", drive), "persistent": "true"})
    assert the_qemu(cloud, keep)
    r = user.post(f"/servers/{keep}/destroy")
    assert r.status_code == 204, r.text
    assert qemu_pids(cloud, keep) == []
    assert keep not in listed(user)
    assert user.get(f"/servers/{keep}/info").status_code == 404
    assert "claimed" not in drive_info(user, drive)  # and the drive is still there
    # A stopped server is destroyed too.
    stopped = servers.create(server_keys("stopped", drive), "/servers/create/stopped")
    r = user.post(f"/servers/{stopped}/destroy")
    assert r.status_code == 204, r.text
    assert listed(user) == []


def test_create_stopped_then_start(cloud: Cloud, user: httpx.Client, servers: Servers) -> None:
    drive = new_drive(user)
    body = f"name later\ncpu 300\nmem 64\nide:0:0 {drive}\n"
    r = user.post("/servers/create/stopped", content=body)
    assert r.status_code == 200, r.text
    info = records(r.text)[0]
    server = info["server"]
    servers.made.append(server)
    assert info["status"] == "stopped" and "started" not in info
    assert qemu_pids(cloud, server) == []
    assert server in listed(user)
    assert "claimed" not in drive_info(user, drive)

    r = user.post(f"/servers/{server}/set", content="mem 80\n")
    assert r.status_code == 200, r.text
    r = user.post(f"/servers/{server}/start")
    assert r.status_code == 200, r.text
    assert records(r.text)[0]["status"] == "active"
    assert records(r.text)[0]["mem"] == "80"
    assert the_qemu(cloud, server)
    assert drive_info(user, drive)["claimed"] == f"{server}:ide:0:0"
    # Not persistent: its first exit deletes it.
    r = user.post(f"/servers/{server}/stop")
    assert r.status_code == 204, r.text
    assert server not in listed(user)
    assert "claimed" not in drive_info(user, drive)


@pytest.fixture
def servers(user: httpx.Client) -> Iterator[Servers]:
    made = Servers(user)
    try:
        yield made
    finally:
        made.cleanup()


def test_destroyed_servers_leave_no_process(cloud: Cloud, fleet: Fleet) -> None:
    """Runs last in the module: everything above was cleaned up or ended."""
    for name in ("selfoff", "button"):
        assert qemu_pids(cloud, fleet.ids[name]) == []
    destroy(fleet.http, fleet.ids["reset"])
    assert qemu_pids(cloud, fleet.ids["reset"]) == []
