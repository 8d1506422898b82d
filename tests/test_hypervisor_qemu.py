"""The QEMU driver on real QEMU (KVM if the probe says it works, else TCG).

No guest OS is needed: ``start`` returns when the guest *runs*, so blank raw
disks made with qemu-img are enough. Taps live in the root network namespace
under unique ``oc-t…`` names (QEMU runs there) and are removed; bridges are
tested inside a network namespace made for the test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import signal
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from overcast.hypervisor import net
from overcast.hypervisor.argv import RunFiles
from overcast.hypervisor.kvm import CACHE_FILE, choose_accel, run_probe, write_firmware
from overcast.hypervisor.qemu import GuestHandle, QemuDriver
from overcast.hypervisor.spec import Accel, DiskSpec, GuestSpec, NicSpec, VncSpec
from overcast.model.errors import BusyError, FailedError, MissingError, UsageError
from qemus import qemus_in, scratch_dir


@pytest.fixture
def work() -> Iterator[Path]:
    """A short directory; kills any QEMU left in it."""
    with scratch_dir() as path:
        yield path


@pytest.fixture
def driver(accel: Accel) -> QemuDriver:
    return QemuDriver(accel, timeout=15.0)


def _image(work: Path, name: str, size: str = "16M") -> Path:
    path = work / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), size], check=True)
    return path


def _spec(
    *disks: DiskSpec, nics: tuple[NicSpec, ...] = (), vnc: VncSpec | None = None
) -> GuestSpec:
    return GuestSpec(
        uuid=str(uuid.uuid4()),
        name="test guest",
        smp=1,
        mem_mib=64,
        cpu_mhz=500,
        disks=disks,
        nics=nics,
        vnc=vnc,
    )


async def _until_ended(pid: int) -> None:
    """Wait (at most 5 s) for ``pid`` to end, through a pidfd as the driver does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await asyncio.to_thread(select.select, [fd], [], [], 5)
    finally:
        os.close(fd)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"oc-n{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


async def test_start_runs_the_guest_with_every_device_confirmed(
    driver: QemuDriver, work: Path
) -> None:
    disks = (
        DiskSpec(_image(work, "boot"), "ide", 0, 0, bootindex=1),
        DiskSpec(_image(work, "cd"), "ide", 1, 1, media="cdrom"),
        DiskSpec(_image(work, "s"), "scsi", 0, 4),
        DiskSpec(_image(work, "scd"), "scsi", 0, 5, media="cdrom"),
        DiskSpec(_image(work, "v"), "virtio", 0, 2),
    )
    nics = (
        NicSpec("e1000", "52:54:00:12:34:01"),
        NicSpec("rtl8139", "52:54:00:12:34:02"),
        NicSpec("virtio", "52:54:00:12:34:03"),
    )
    spec = _spec(*disks, nics=nics)
    guest = await driver.start(spec, work / "g")
    try:
        info = await driver.info(guest)
        assert (info.status, info.running) == ("running", True)
        assert (info.uuid, info.name, info.pid) == (spec.uuid, "test guest", guest.pid)
        assert [(d.device, d.image, d.readonly) for d in info.disks] == [
            ("drive-block-2", str(work / "v"), False),
            ("drive-ide-0-0", str(work / "boot"), False),
            ("drive-ide-1-1", str(work / "cd"), True),
            ("drive-scsi-0-4", str(work / "s"), False),
            ("drive-scsi-0-5", str(work / "scd"), True),
        ]
        assert [(n.device, n.model, n.mac, n.tap) for n in info.nics] == [
            ("nic0", "e1000", "52:54:00:12:34:01", None),
            ("nic1", "rtl8139", "52:54:00:12:34:02", None),
            ("nic2", "virtio-net-pci", "52:54:00:12:34:03", None),
        ]
        # Daemonized: not our child, so it outlives us.
        assert _ppid(guest.pid) != os.getpid()
        assert guest.serial_log.exists()
    finally:
        await driver.stop(guest)


async def test_a_second_start_on_the_same_image_fails_and_leaves_nothing(
    driver: QemuDriver, work: Path
) -> None:
    image = _image(work, "disk")
    first = await driver.start(_spec(DiskSpec(image, "ide", 0, 0)), work / "a")
    try:
        with pytest.raises(FailedError, match='Failed to get "write" lock') as caught:
            await driver.start(_spec(DiskSpec(image, "virtio", 0, 0)), work / "b")
        assert "drive-block-0" in caught.value.message
        assert not (work / "b").exists()
        assert qemus_in(work / "b") == []
        assert (await driver.info(first)).running
    finally:
        await driver.stop(first)


async def test_a_missing_image_fails_with_qemus_message(driver: QemuDriver, work: Path) -> None:
    (work / "g").mkdir()
    with pytest.raises(FailedError, match="No such file"):
        await driver.start(_spec(DiskSpec(work / "nothing", "ide", 0, 0)), work / "g")
    # The directory existed before the start, so it stays; its files do not.
    assert list((work / "g").iterdir()) == []


async def test_shared_disks_and_cdroms_run_in_two_guests(driver: QemuDriver, work: Path) -> None:
    shared, cd = _image(work, "shared"), _image(work, "cd")
    guests = []
    try:
        for name in ("a", "b"):
            spec = _spec(
                DiskSpec(shared, "virtio", 0, 0, shared=True),
                DiskSpec(cd, "ide", 0, 1, media="cdrom"),
            )
            guests.append(await driver.start(spec, work / name))
        assert all([(await driver.info(g)).running for g in guests])
    finally:
        for guest in guests:
            await driver.stop(guest)


async def test_stop_kills_at_once_and_cleans_up(driver: QemuDriver, work: Path) -> None:
    guest = await driver.start(_spec(DiskSpec(_image(work, "d"), "ide", 0, 0)), work / "g")
    files = RunFiles(work / "g")
    assert files.qmp.exists() and files.pidfile.exists()
    ms = await driver.stop(guest)
    print(f"stop: SIGKILL to process end in {ms:.1f} ms")
    assert ms < 1000
    assert _ended(guest.pid)
    assert guest.exited
    assert (await driver.wait_exit(guest)).reason == "killed"
    assert not files.qmp.exists() and not files.pidfile.exists()
    assert await driver.stop(guest) == 0.0  # a second stop is harmless


async def test_adopt_after_overcast_forgets_the_guest(driver: QemuDriver, work: Path) -> None:
    spec = _spec(
        DiskSpec(_image(work, "d"), "scsi", 0, 1), nics=(NicSpec("virtio", "52:54:00:aa:00:01"),)
    )
    guest = await driver.start(spec, work / "g")
    before = await driver.info(guest)
    await driver.close(guest)  # as if overcast had been killed: QEMU runs on
    assert not _ended(guest.pid)

    again = await QemuDriver(driver.accel).adopt(work / "g")
    try:
        after = await driver.info(again)
        assert (after.pid, after.uuid, after.name) == (before.pid, spec.uuid, spec.name)
        assert after.disks == before.disks and after.nics == before.nics
        assert after.running
    finally:
        await driver.stop(again)


async def test_adopt_of_a_guest_that_ended_meanwhile_is_missing(
    driver: QemuDriver, work: Path
) -> None:
    guest = await driver.start(_spec(DiskSpec(_image(work, "d"), "ide", 0, 0)), work / "g")
    await driver.close(guest)
    os.kill(guest.pid, signal.SIGKILL)
    await _until_ended(guest.pid)
    with pytest.raises(MissingError):
        await driver.adopt(work / "g")
    files = RunFiles(work / "g")
    assert not files.pidfile.exists() and not files.qmp.exists()
    assert files.serial.exists()  # logs are kept

    # A stale pidfile naming an unrelated live process is not adopted either.
    files.pidfile.write_text(str(os.getpid()))
    with pytest.raises(MissingError):
        await driver.adopt(work / "g")
    with pytest.raises(MissingError):
        await driver.adopt(work / "never")


async def test_wait_exit_notices_the_end_and_its_reason(driver: QemuDriver, work: Path) -> None:
    guest = await driver.start(_spec(DiskSpec(_image(work, "d"), "ide", 0, 0)), work / "g")
    waiters = [asyncio.create_task(driver.wait_exit(guest)) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    began = time.perf_counter()
    os.kill(guest.pid, signal.SIGTERM)  # QEMU shuts down cleanly, with a SHUTDOWN event
    ends = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    print(f"wait_exit: SIGTERM to noticed exit in {(time.perf_counter() - began) * 1000:.1f} ms")
    assert ends[0] == ends[1]
    assert (ends[0].reason, ends[0].guest_initiated) == ("host-signal", False)
    assert not RunFiles(work / "g").qmp.exists()


async def test_wait_exit_notices_a_kill_from_outside(driver: QemuDriver, work: Path) -> None:
    guest = await driver.start(_spec(DiskSpec(_image(work, "d"), "ide", 0, 0)), work / "g")
    waiter = asyncio.create_task(driver.wait_exit(guest))
    os.kill(guest.pid, signal.SIGKILL)
    end = await asyncio.wait_for(waiter, 5)
    assert end.reason == "killed"
    with pytest.raises(FailedError):
        await driver.info(guest)


async def test_pause_resume_reset_and_powerdown(driver: QemuDriver, work: Path) -> None:
    guest = await driver.start(_spec(DiskSpec(_image(work, "d"), "ide", 0, 0)), work / "g")
    try:
        await driver.pause(guest)
        assert (await driver.info(guest)).status == "paused"
        await driver.resume(guest)
        assert (await driver.info(guest)).status == "running"
        await driver.reset(guest)
        assert (await driver.info(guest)).running
        # A blank disk has no OS to obey the button: the press is accepted, the guest stays.
        await driver.powerdown(guest)
        assert (await driver.info(guest)).running
        assert not guest.exited
    finally:
        await driver.stop(guest)


async def test_start_is_idempotent_per_run_directory(driver: QemuDriver, work: Path) -> None:
    spec = _spec(DiskSpec(_image(work, "d"), "ide", 0, 0))
    guest = await driver.start(spec, work / "g")
    await driver.close(guest)
    again = await driver.start(spec, work / "g")
    try:
        assert again.pid == guest.pid
        await driver.close(again)
        other = _spec(DiskSpec(_image(work, "e"), "ide", 0, 0))
        with pytest.raises(BusyError):
            await driver.start(other, work / "g")
        again = await driver.adopt(work / "g")
        assert (await driver.info(again)).running
    finally:
        await driver.stop(again)


async def test_a_cancelled_start_leaves_nothing_behind(driver: QemuDriver, work: Path) -> None:
    image = _image(work, "d")
    outcomes = []
    for step, delay in enumerate((0.0, 0.01, 0.03, 0.06, 0.1, 0.2)):
        rundir = work / f"g{step}"
        task = asyncio.create_task(driver.start(_spec(DiskSpec(image, "ide", 0, 0)), rundir))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            guest: GuestHandle = await task
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            assert qemus_in(rundir) == []
            assert not rundir.exists()
        else:
            outcomes.append("started")
            await driver.stop(guest)
    print("cancelled start outcomes:", outcomes)
    assert "cancelled" in outcomes


async def test_vnc_asks_for_the_password_set_over_qmp(driver: QemuDriver, work: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if port < 5900:
        port = 5900 + port % 1000
    locked = _spec(vnc=VncSpec("127.0.0.1", port - 5900, "s3cret"))
    guest = await driver.start(locked, work / "g")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            version = await asyncio.wait_for(reader.readexactly(12), 5)
            assert version.startswith(b"RFB 003.")
            writer.write(b"RFB 003.008\n")
            count = (await asyncio.wait_for(reader.readexactly(1), 5))[0]
            types = await reader.readexactly(count)
            assert types == b"\x02"  # VNC authentication: the password is in force
        finally:
            writer.close()
            await writer.wait_closed()
        assert "s3cret" not in _cmdline(guest.pid)
    finally:
        await driver.stop(guest)


async def test_tap_nic_in_the_root_namespace(driver: QemuDriver, work: Path) -> None:
    tap = f"oc-t{secrets.token_hex(4)}"
    await net.ensure_tap(tap)
    try:
        spec = _spec(
            DiskSpec(_image(work, "d"), "ide", 0, 0),
            nics=(NicSpec("e1000", "52:54:00:bb:00:01", tap),),
        )
        guest = await driver.start(spec, work / "g")
        try:
            (nic,) = (await driver.info(guest)).nics
            assert (nic.tap, nic.mac, nic.model) == (tap, "52:54:00:bb:00:01", "e1000")
            assert isinstance(nic.rx_bytes, int) and isinstance(nic.tx_packets, int)
            link = await net.link(tap)
            assert link is not None and link.up
            await driver.close(guest)
            guest = await driver.adopt(work / "g")  # the tap is read back from QEMU's argv
            assert (await driver.info(guest)).nics[0].tap == tap
        finally:
            await driver.stop(guest)
    finally:
        await net.remove_link(tap)
    assert await net.link(tap) is None


async def test_bridge_and_taps_in_a_network_namespace(netns: str) -> None:
    ns = netns
    for _ in range(2):  # everything is idempotent
        await net.ensure_bridge("br-pub", netns=ns)
        await net.ensure_tap("tap0", bridge="br-pub", netns=ns)
    bridge = await net.link("br-pub", netns=ns)
    tap = await net.link("tap0", netns=ns)
    assert bridge is not None and (bridge.kind, bridge.up) == ("bridge", True)
    assert tap is not None and (tap.kind, tap.master, tap.up) == ("tun", "br-pub", True)
    assert await net.link("tap0") is None  # not in the root namespace

    await net.ensure_bridge("br-vlan9", netns=ns)
    await net.ensure_tap("tap0", bridge="br-vlan9", netns=ns)  # moved to another bridge
    tap = await net.link("tap0", netns=ns)
    assert tap is not None and tap.master == "br-vlan9"

    with pytest.raises(FailedError, match="not a tap"):
        await net.ensure_tap("br-pub", netns=ns)
    with pytest.raises(FailedError, match="not a bridge"):
        await net.ensure_bridge("tap0", netns=ns)
    with pytest.raises(UsageError):
        await net.ensure_tap("no/slashes", netns=ns)

    for _ in range(2):
        await net.remove_link("tap0", netns=ns)
    assert await net.link("tap0", netns=ns) is None
    await net.remove_link("br-pub", netns=ns)
    assert await net.link("br-pub", netns=ns) is None


async def test_kvm_probe_is_quick_and_cached(work: Path) -> None:
    began = time.perf_counter()
    first = await choose_accel(work)
    took = time.perf_counter() - began
    print(f"kvm probe: {first.accel} ({first.reason}) in {took * 1000:.0f} ms")
    assert first.accel in ("kvm", "tcg") and first.reason
    assert took < 2.0
    began = time.perf_counter()
    second = await choose_accel(work)
    assert (second.accel, second.cached) == (first.accel, os.access("/dev/kvm", os.W_OK))
    assert time.perf_counter() - began < 0.5
    if second.cached:
        assert (work / CACHE_FILE).exists()
    missing = await choose_accel(work, device=work / "no-kvm")
    assert (missing.accel, missing.seconds) == ("tcg", None)


async def test_the_probe_firmware_runs_to_its_exit(work: Path) -> None:
    # Under TCG the loop certainly runs: this proves the firmware and the
    # exit-status check, so a "kvm" verdict means KVM really ran it.
    result = await run_probe("qemu-system-x86_64", write_firmware(work), "tcg")
    assert result.ok, result.detail


async def test_spawn_to_running_time(
    driver: QemuDriver, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(work, "d")
    ours, raw = [], []
    for trial in range(5):
        spec = _spec(DiskSpec(image, "ide", 0, 0), nics=(NicSpec("virtio", "52:54:00:cc:00:01"),))
        began = time.perf_counter()
        guest = await driver.start(spec, work / f"o{trial}")
        ours.append(time.perf_counter() - began)
        await driver.stop(guest)

        # The same command line by hand: spawn, QMP, cont.
        rundir = work / f"r{trial}"
        rundir.mkdir()
        argv = driver.argv(spec, rundir)
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv)
        assert await proc.wait() == 0
        client = QMPClient("raw")
        await client.connect(str(rundir / "qmp.sock"))
        await client.execute("cont")
        raw.append(time.perf_counter() - began)
        await client.disconnect()
        pid = int((rundir / "qemu.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        await _until_ended(pid)  # its image lock goes with it
    with capsys.disabled():
        print(
            f"\nQEMU spawn -> running ({driver.accel}), median of 5: driver "
            f"{statistics.median(ours) * 1000:.0f} ms, same argv by hand "
            f"{statistics.median(raw) * 1000:.0f} ms"
        )
    assert statistics.median(ours) < 5.0
