"""The host agent on real QEMU guests (TCG here), real taps and real bridges.

Guests boot the test image (``scripts/build-guest.sh``) from a qcow2 overlay
per test, so the library image is never written; tests that need no OS run
on blank disks. Booting takes 5-15 s under TCG, so only two tests boot, and
the one that boots twice (reset) shares its guest with the power-button test.

Every test gets its own interface prefix (``t`` + 4 hex digits), so its taps
and bridges are its own; the fixtures close the agents, kill every QEMU
under the test's directory and remove every link with that prefix, even
when a test fails. No traffic leaves a test's bridges: they have no uplink,
and the booted guest's DHCP requests find no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from overcast.host.agent import UNOBSERVED, GuestEnd, HostAgent, RunningGuest
from overcast.host.client import HostClient, LocalHost
from overcast.hypervisor import net
from overcast.hypervisor.qemu import QemuDriver
from overcast.hypervisor.spec import Accel, DiskSpec, GuestSpec, NicSpec, VncSpec
from overcast.model.errors import BusyError, FailedError, MissingError, UsageError
from qemus import process_end, qemus_in, scratch_dir

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = REPO / "build" / "guest"
MARKER = "OVERCAST-GUEST-UP"
BOOT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def guest_image() -> Path:
    """The test guest's disk; the build script does nothing when it is up to date."""
    subprocess.run(["bash", str(REPO / "scripts" / "build-guest.sh")], check=True, timeout=600)
    return GUEST_DIR / "guest.img"


@pytest.fixture
def ifprefix() -> Iterator[str]:
    """This test's prefix for taps and bridges; every link with it is removed after."""
    prefix = f"t{secrets.token_hex(2)}"
    try:
        yield prefix
    finally:
        for name in os.listdir("/sys/class/net"):
            if name.startswith(prefix):
                subprocess.run(["ip", "link", "del", "dev", name], check=False)


@pytest.fixture
def work(ifprefix: str) -> Iterator[Path]:
    """A short directory; kills any QEMU left in it (before the taps go)."""
    with scratch_dir() as path:
        yield path


class Ends:
    """An ``on_exit`` sink that records each end and when it was called."""

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.calls: list[tuple[GuestEnd, float]] = []
        self.returned = 0
        self._fail = fail
        self._delay = delay
        self._changed = asyncio.Event()

    async def __call__(self, end: GuestEnd) -> None:
        self.calls.append((end, time.time()))
        self._changed.set()
        if self._fail:
            self._fail -= 1
            raise RuntimeError("the manager is down")
        await asyncio.sleep(self._delay)
        self.returned += 1

    @property
    def all(self) -> list[GuestEnd]:
        return [end for end, _ in self.calls]

    async def wait(self, count: int, seconds: float) -> list[GuestEnd]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while len(self.calls) < count:
                    self._changed.clear()
                    await self._changed.wait()
        assert len(self.calls) >= count, f"{len(self.calls)} ends after {seconds} s"
        return self.all


class Host:
    """Makes agents on one run directory (as successive overcast runs would)."""

    def __init__(self, work: Path, driver: QemuDriver, ifprefix: str) -> None:
        self.work = work
        self.rundir = work / "run"
        self.driver = driver
        self.ifprefix = ifprefix
        self.agents: list[HostAgent] = []

    def agent(self, ends: Ends | None = None) -> tuple[HostAgent, Ends]:
        ends = ends if ends is not None else Ends()
        agent = HostAgent(self.rundir, self.driver, ends, ifprefix=self.ifprefix)
        self.agents.append(agent)
        return agent, ends

    def serial(self, server: str) -> Path:
        return self.rundir / server / "serial.log"


@pytest.fixture
async def host(work: Path, accel: Accel, ifprefix: str) -> AsyncIterator[Host]:
    made = Host(work, QemuDriver(accel, timeout=15.0), ifprefix)
    try:
        yield made
    finally:
        for agent in made.agents:
            await agent.close()


def _overlay(work: Path, backing: Path, name: str) -> Path:
    """A qcow2 over the library image: the guest writes here, never there."""
    path = work / name
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing), str(path)],
        check=True,
    )
    return path


def _blank(work: Path, name: str, first_line: bytes = b"") -> Path:
    path = work / name
    with path.open("wb") as image:
        image.write(first_line)
        image.truncate(1024 * 1024)
    return path


def _spec(
    *disks: DiskSpec, nics: tuple[NicSpec, ...] = (), vnc: VncSpec | None = None
) -> GuestSpec:
    return GuestSpec(
        uuid=str(uuid.uuid4()),
        name="agent test",
        smp=1,
        mem_mib=128,
        cpu_mhz=2000,  # one core: the cgroup quota would slow a smaller guest's boot
        disks=disks,
        nics=nics,
        vnc=vnc,
    )


def _boot_disk(image: Path) -> DiskSpec:
    return DiskSpec(image, "ide", 0, 0, bootindex=0, format="qcow2")


async def _serial(path: Path, text: str, *, count: int = 1, seconds: float = BOOT_TIMEOUT) -> str:
    """Wait until ``text`` is on the serial console ``count`` times; the console."""
    began = time.monotonic()
    log = ""
    while time.monotonic() - began < seconds:
        log = await asyncio.to_thread(_read, path)
        if log.count(text) >= count:
            return log
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not {count} times on the console in {seconds} s:\n{log}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def _eventually(check: Callable[[], bool], seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check(), f"not true after {seconds} s"


async def test_boot_reset_and_power_button(host: Host, guest_image: Path) -> None:
    agent, ends = host.agent()
    mac = "52:54:00:a9:00:01"
    spec = _spec(
        _boot_disk(_overlay(host.work, guest_image, "boot")), nics=(NicSpec("e1000", mac),)
    )
    server = spec.uuid
    began = time.perf_counter()
    started = await agent.start(spec, [None])
    took = time.perf_counter() - began
    print(f"\nagent start -> running: {took * 1000:.0f} ms")
    # It returned when QEMU ran, long before the guest's OS was up.
    assert MARKER not in host.serial(server).read_text()
    assert took < 5.0
    assert agent.running() == {server}

    tap, bridge = agent.tap(server, 0), agent.bridge(None)
    assert tap.startswith(host.ifprefix) and len(tap) == 15
    link = await net.link(tap)
    assert link is not None and (link.kind, link.master, link.up) == ("tun", bridge, True)
    link = await net.link(bridge)
    assert link is not None and (link.kind, link.up) == ("bridge", True)
    info = started.info
    assert (info.uuid, info.status, info.running) == (server, "running", True)
    assert [(d.device, d.image, d.readonly) for d in info.disks] == [
        ("drive-ide-0-0", str(host.work / "boot"), False)
    ]
    assert [(n.device, n.model, n.mac, n.tap) for n in info.nics] == [("nic0", "e1000", mac, tap)]
    assert started.vnc is None
    assert (await agent.info(server)).info.pid == info.pid

    console = await _serial(host.serial(server), "OVERCAST-DEVICES-END")
    up = time.perf_counter() - began
    assert f"OVERCAST-NIC eth0 {mac} e1000" in console.splitlines(), console

    # A hard reset: the same QEMU, the OS boots again.
    await agent.reset(server)
    await _serial(host.serial(server), MARKER, count=2)
    again = time.perf_counter() - began
    assert (await agent.info(server)).info.pid == info.pid
    assert ends.all == []

    # The button is armed before the marker is printed.
    pressed = time.perf_counter()
    await agent.powerdown(server)
    (end,) = await ends.wait(1, 15)
    print(
        f"marker after {up:.1f} s, again after reset at {again:.1f} s; "
        f"power button -> reported in {(time.perf_counter() - pressed) * 1000:.0f} ms"
    )
    assert (end.server, end.reason, end.guest_initiated) == (server, "guest-shutdown", True)
    assert await net.link(tap) is None
    await _eventually(lambda: not (host.rundir / server).exists())
    assert agent.running() == set()
    assert qemus_in(host.work) == []
    with pytest.raises(MissingError):
        await agent.info(server)
    await asyncio.sleep(0.3)
    assert len(ends.calls) == 1


async def test_a_guest_that_powers_itself_off_is_reported_at_once(
    host: Host, guest_image: Path
) -> None:
    agent, ends = host.agent()
    note = _blank(host.work, "note", b"overcast-poweroff 1\n")
    spec = _spec(
        _boot_disk(_overlay(host.work, guest_image, "boot")),
        DiskSpec(note, "virtio", 0, 1),
        nics=(NicSpec("virtio", "52:54:00:a9:00:02"),),
    )
    started = await agent.start(spec, [None])
    qemu_end = process_end(started.info.pid)
    # Boots, reads the second drive, powers off a second after its marker.
    (end,) = await ends.wait(1, BOOT_TIMEOUT)
    ended = await qemu_end
    called = ends.calls[0][1]
    print(f"\nQEMU end -> on_exit called: {(called - ended) * 1000:.0f} ms")
    assert (end.server, end.reason, end.guest_initiated) == (spec.uuid, "guest-shutdown", True)
    assert 0 <= called - ended < 1.0
    assert abs(end.at - ended) < 1.0
    assert await net.link(agent.tap(spec.uuid, 0)) is None
    await asyncio.sleep(0.3)
    assert len(ends.calls) == 1


async def test_stop_kills_at_once_and_reports_once(host: Host) -> None:
    agent, ends = host.agent()
    spec = _spec(
        DiskSpec(_blank(host.work, "d"), "ide", 0, 0),
        nics=(NicSpec("rtl8139", "52:54:00:a9:00:03"),),
    )
    started = await agent.start(spec, [None])
    qemu_end = process_end(started.info.pid)
    began = time.time()
    await agent.stop(spec.uuid)
    returned = time.time()
    killed = await qemu_end
    print(
        f"\nstop: process ended after {(killed - began) * 1000:.1f} ms, "
        f"end reported and stop returned after {(returned - began) * 1000:.1f} ms"
    )
    assert killed - began < 1.0
    # Reported before stop returns, with everything already cleaned up.
    assert [(e.server, e.reason, e.guest_initiated) for e in ends.all] == [
        (spec.uuid, "killed", False)
    ]
    assert began <= ends.all[0].at <= returned
    assert await net.link(agent.tap(spec.uuid, 0)) is None
    assert not (host.rundir / spec.uuid).exists()
    assert agent.running() == set()
    with pytest.raises(MissingError):
        await agent.stop(spec.uuid)
    await asyncio.sleep(0.3)
    assert len(ends.calls) == 1


async def test_a_failed_start_leaves_nothing(host: Host) -> None:
    agent, ends = host.agent()
    image = _blank(host.work, "d")
    first = _spec(DiskSpec(image, "ide", 0, 0), nics=(NicSpec("e1000", "52:54:00:a9:00:04"),))
    await agent.start(first, [None])
    vlan = str(uuid.uuid4())
    # The same image, writable, in a second guest: QEMU's image lock refuses.
    second = _spec(DiskSpec(image, "virtio", 0, 0), nics=(NicSpec("e1000", "52:54:00:a9:00:05"),))
    with pytest.raises(FailedError, match='Failed to get "write" lock'):
        await agent.start(second, [vlan])
    assert not (host.rundir / second.uuid).exists()
    assert qemus_in(host.rundir / second.uuid) == []
    assert await net.link(agent.tap(second.uuid, 0)) is None
    assert agent.running() == {first.uuid}
    assert (await agent.info(first.uuid)).info.running
    # Refused before any side effect.
    with pytest.raises(BusyError):
        await agent.start(first, [None])
    with pytest.raises(UsageError):
        await agent.start(second, [])
    assert ends.all == []

    # Nothing is left that would stop it from starting once the image is free.
    await agent.stop(first.uuid)
    started = await agent.start(second, [vlan])
    link = await net.link(agent.tap(second.uuid, 0))
    assert link is not None and link.master == agent.bridge(vlan) != agent.bridge(None)
    assert started.info.nics[0].tap == agent.tap(second.uuid, 0)
    await agent.stop(second.uuid)
    assert [e.server for e in ends.all] == [first.uuid, second.uuid]


async def test_a_cancelled_start_leaves_nothing(host: Host) -> None:
    agent, ends = host.agent()
    outcomes = []
    for step, delay in enumerate((0.0, 0.005, 0.02, 0.05, 0.1)):
        spec = _spec(
            DiskSpec(_blank(host.work, f"d{step}"), "ide", 0, 0),
            nics=(NicSpec("e1000", f"52:54:00:a9:01:0{step}"),),
        )
        task = asyncio.create_task(agent.start(spec, [None]))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            assert not (host.rundir / spec.uuid).exists()
            assert qemus_in(host.rundir / spec.uuid) == []
            assert await net.link(agent.tap(spec.uuid, 0)) is None
        else:
            outcomes.append("started")
            await agent.stop(spec.uuid)
    print("\ncancelled start outcomes:", outcomes)
    assert "cancelled" in outcomes
    assert agent.running() == set()
    assert len(ends.calls) == outcomes.count("started")


async def test_start_is_exclusive_and_takes_over_an_unsupervised_guest(host: Host) -> None:
    first, _ = host.agent()
    spec = _spec(
        DiskSpec(_blank(host.work, "d"), "ide", 0, 0), nics=(NicSpec("e1000", "52:54:00:a9:00:09"),)
    )
    results = await asyncio.gather(
        first.start(spec, [None]), first.start(spec, [None]), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["BusyError", "RunningGuest"]
    (started,) = [r for r in results if isinstance(r, RunningGuest)]
    await first.close()

    # No adopt_all: starting the guest again finds it running and takes it over.
    second, ends = host.agent()
    again = await second.start(spec, [None])
    assert again.info.pid == started.info.pid
    assert [n.tap for n in again.info.nics] == [second.tap(spec.uuid, 0)]
    assert second.running() == {spec.uuid}
    await second.stop(spec.uuid)
    assert [e.server for e in ends.all] == [spec.uuid]


async def test_a_start_waits_until_the_last_end_is_reported(host: Host) -> None:
    agent, ends = host.agent(Ends(delay=0.5))
    spec = _spec(
        DiskSpec(_blank(host.work, "d"), "ide", 0, 0), nics=(NicSpec("e1000", "52:54:00:a9:00:0a"),)
    )
    started = await agent.start(spec, [None])
    os.kill(started.info.pid, signal.SIGKILL)
    await ends.wait(1, 5)  # the manager is still taking the end in
    assert agent.running() == set() and ends.returned == 0
    again = await agent.start(spec, [None])
    assert ends.returned == 1
    assert again.info.pid != started.info.pid
    # The old run's clean-up did not touch the new one.
    assert (host.rundir / spec.uuid / "qemu.pid").exists()
    assert await net.link(agent.tap(spec.uuid, 0)) is not None
    await agent.stop(spec.uuid)
    assert [e.reason for e in ends.all] == ["killed", "killed"]


async def test_guests_outlive_the_agent_and_are_adopted(host: Host) -> None:
    first, first_ends = host.agent()
    kept = _spec(
        DiskSpec(_blank(host.work, "a"), "ide", 0, 0),
        nics=(NicSpec("virtio", "52:54:00:a9:00:06"),),
        vnc=VncSpec("127.0.0.1", 0, "secret"),
    )
    doomed = _spec(
        DiskSpec(_blank(host.work, "b"), "ide", 0, 0),
        nics=(NicSpec("e1000", "52:54:00:a9:00:07"),),
        vnc=VncSpec("127.0.0.1", 0),
    )
    before = await first.start(kept, [None])
    other = await first.start(doomed, [None])
    victim = other.info.pid
    assert before.vnc is not None and before.vnc.ip == "127.0.0.1"
    assert other.vnc is not None and other.vnc.port != before.vnc.port
    # Long enough that the guests' own files say less than the agent's heartbeat.
    await asyncio.sleep(1.5)

    await first.close()  # overcast goes away; its guests do not
    assert first_ends.all == []
    assert sorted(qemus_in(host.work)) == sorted([before.info.pid, victim])
    assert await net.link(first.tap(doomed.uuid, 0)) is not None
    gone = process_end(victim)
    os.kill(victim, signal.SIGKILL)
    killed = await gone
    await asyncio.sleep(0.5)

    second, ends = host.agent()
    await second.adopt_all()
    assert second.running() == {kept.uuid}
    after = await second.info(kept.uuid)
    assert (after.info.pid, after.info.running, after.vnc) == (before.info.pid, True, before.vnc)
    nic = [(n.device, n.model, n.mac, n.tap) for n in before.info.nics]
    assert [(n.device, n.model, n.mac, n.tap) for n in after.info.nics] == nic
    (end,) = ends.all
    print(f"\nend while no agent ran: reported at {end.at - killed:+.3f} s from the kill")
    assert (end.server, end.reason, end.guest_initiated) == (doomed.uuid, UNOBSERVED, False)
    # The last moment it was known alive: the first agent's last heartbeat.
    assert killed - 0.5 <= end.at <= killed
    assert await net.link(second.tap(doomed.uuid, 0)) is None
    assert not (host.rundir / doomed.uuid).exists()
    assert await net.link(second.tap(kept.uuid, 0)) is not None

    await second.adopt_all()  # again: nothing new
    assert second.running() == {kept.uuid} and len(ends.calls) == 1
    await second.stop(kept.uuid)
    assert [e.server for e in ends.all] == [doomed.uuid, kept.uuid]
    assert qemus_in(host.work) == []


async def test_an_end_whose_report_failed_is_reported_by_the_next_run(host: Host) -> None:
    first, failing = host.agent(Ends(fail=1))
    spec = _spec(DiskSpec(_blank(host.work, "d"), "ide", 0, 0))
    await first.start(spec, [])
    await first.stop(spec.uuid)
    (seen,) = failing.all
    assert (host.rundir / spec.uuid).exists()  # kept for the next run
    await first.adopt_all()  # not reported twice by one run
    assert len(failing.calls) == 1
    await first.close()

    second, ends = host.agent()
    await second.adopt_all()
    assert ends.all == [seen]  # the same facts: reason and time of the kill
    assert seen.reason == "killed"
    assert not (host.rundir / spec.uuid).exists()


async def test_local_host_passes_every_verb_through(host: Host) -> None:
    agent, ends = host.agent()
    client: HostClient = LocalHost(agent)
    spec = _spec(
        DiskSpec(_blank(host.work, "d"), "scsi", 0, 0),
        nics=(NicSpec("e1000", "52:54:00:a9:00:08"),),
    )
    started = await client.start(spec, [None])
    server = spec.uuid
    assert await client.running() == {server}
    await client.pause(server)
    assert (await client.info(server)).info.status == "paused"
    await client.resume(server)
    assert (await client.info(server)).info.status == "running"
    await client.reset(server)
    await client.powerdown(server)  # no OS to obey it: accepted, nothing happens
    now = await client.info(server)
    assert (now.info.pid, now.info.running) == (started.info.pid, True)
    assert ends.all == []
    await client.stop(server)
    assert [e.server for e in ends.all] == [server]
    assert await client.running() == set()
    with pytest.raises(MissingError):
        await client.info(server)
    await client.close()
