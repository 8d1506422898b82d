"""The test guest that scripts/build-guest.sh makes, booted under QEMU (TCG).

Later tests start servers from this image through the API and trust what it
prints on its serial console (the marker, the device lines, the exits), so
these tests pin that behaviour down on bare QEMU first: boot from the disk
image, power-off on the ACPI button, self power-off told by a second drive or
by the kernel command line, and the device lines for virtio and e1000.

TCG, never KVM: /dev/kvm on these machines is paravirtual and slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-guest.sh"
GUEST_DIR = REPO / "build" / "guest"

MARKER = "OVERCAST-GUEST-UP"
BOOT_TIMEOUT = 60.0
EXIT_TIMEOUT = 10.0
DISK_SECTORS = 32 * 1024 * 1024 // 512
OUTPUTS = ("guest.img", "guest.img.gz", "vmlinuz", "initrd.img", "cmdline")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")


def build(outdir: Path) -> float:
    """Runs the build script; returns how long it took."""
    started = time.monotonic()
    subprocess.run(["bash", str(BUILD_SCRIPT), str(outdir)], check=True, timeout=600)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    """The built guest; the script skips the work when it is up to date."""
    print(f"build-guest.sh: {build(GUEST_DIR):.2f} s")
    return GUEST_DIR


def test_a_second_build_does_nothing_and_the_outputs_agree(guest_dir: Path) -> None:
    before = {name: (guest_dir / name).stat().st_mtime_ns for name in OUTPUTS}
    took = build(guest_dir)
    assert took < 1.0
    assert {name: (guest_dir / name).stat().st_mtime_ns for name in OUTPUTS} == before

    image = (guest_dir / "guest.img").read_bytes()
    assert len(image) == DISK_SECTORS * 512
    assert gzip.decompress((guest_dir / "guest.img.gz").read_bytes()) == image
    # syslinux's MBR boot code, then one bootable FAT16 partition at 1 MiB.
    mbr = SYSLINUX_MBR.read_bytes()
    assert image[: len(mbr)] == mbr
    assert image[510:512] == b"\x55\xaa"
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(guest_dir / "guest.img")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["partitiontable"]
    assert [(p["start"], p["size"], p["type"], p.get("bootable")) for p in table["partitions"]] == [
        (2048, DISK_SECTORS - 2048, "6", True)
    ]
    assert image[1024 * 1024 + 54 : 1024 * 1024 + 62] == b"FAT16   "
    cmdline = set((guest_dir / "cmdline").read_text().split())
    assert {"console=ttyS0", "quiet", "cryptomgr.notests", "rodata=off"} <= cmdline


class Guest:
    """One QEMU process whose serial console (stdout) is read line by line.

    Lines are kept with the time they arrived, so that tests can time the
    boot and the exits against the moment of the spawn.
    """

    def __init__(self, proc: asyncio.subprocess.Process, spawned: float) -> None:
        self.proc = proc
        self.spawned = spawned
        self.lines: list[tuple[float, str]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append((time.monotonic(), line))
            self._changed.set()
        self._changed.set()

    @property
    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def find(self, prefix: str) -> list[str]:
        return [line for _, line in self.lines if line.startswith(prefix)]

    async def wait_for(self, prefix: str, seconds: float) -> float:
        """Seconds from the spawn until the first line starting with prefix."""
        seen = 0
        try:
            async with asyncio.timeout(seconds):
                while True:
                    for at, line in self.lines[seen:]:
                        if line.startswith(prefix):
                            return at - self.spawned
                    seen = len(self.lines)
                    if self._reader.done():
                        raise AssertionError(f"QEMU ended before {prefix!r}:\n{self.log}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {prefix!r} within {seconds} s:\n{self.log}") from None

    async def wait_exit(self, seconds: float) -> int:
        """QEMU's exit code, once it has ended by itself within seconds."""
        try:
            async with asyncio.timeout(seconds):
                code = await self.proc.wait()
                await self._reader
        except TimeoutError:
            raise AssertionError(f"QEMU still runs after {seconds} s:\n{self.log}") from None
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def qemu(args: Sequence[str], *, qmp: bool = True) -> AsyncIterator[tuple[Guest, QMPClient]]:
    """Runs QEMU (q35, TCG, 256 MiB, serial on stdout) with args; kills it on the way out.

    QMP is ours to listen on and QEMU connects to it, so there is no race
    with the creation of a socket.
    """
    with tempfile.TemporaryDirectory(prefix="oc-guest-") as tmp:
        sock = f"{tmp}/qmp.sock"
        client = QMPClient("test-guest")
        argv = [
            "qemu-system-x86_64",
            "-no-user-config",
            "-nodefaults",
            "-machine",
            "q35,accel=tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-serial",
            "stdio",
            *(["-qmp", f"unix:{sock}"] if qmp else []),
            *args,
        ]
        if qmp:
            await client.start_server(sock)
        guest: Guest | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            guest = Guest(proc, time.monotonic())
            if qmp:
                async with asyncio.timeout(10):
                    await client.accept()
            yield guest, client
        finally:
            if guest is not None:
                await guest.stop()
            # QEMU is gone, so the session ends with an EOF: expected here.
            with contextlib.suppress(Exception):
                await client.disconnect()


def boot_disk(path: Path, device: str) -> list[str]:
    """The image as the first boot device; snapshot=on keeps it unmodified."""
    return [
        "-drive",
        f"file={path},format=raw,if=none,id=boot,snapshot=on",
        "-device",
        f"{device},drive=boot,bootindex=0",
    ]


async def power_button(guest: Guest, client: QMPClient) -> float:
    """Presses the ACPI power button; returns seconds until QEMU exited by itself."""
    pressed = time.monotonic()
    async with asyncio.timeout(5):
        await client.execute("system_powerdown")
    code = await guest.wait_exit(EXIT_TIMEOUT)
    took = time.monotonic() - pressed
    assert code == 0, guest.log
    assert guest.find("OVERCAST-POWERING-OFF button"), guest.log
    return took


async def test_disk_image_boots_and_powers_off_on_the_acpi_button(guest_dir: Path) -> None:
    async with qemu([*boot_disk(guest_dir / "guest.img", "ide-hd"), "-nic", "none"]) as (
        guest,
        client,
    ):
        up = await guest.wait_for(MARKER, BOOT_TIMEOUT)
        await guest.wait_for("OVERCAST-DEVICES-END", 5)
        assert guest.find("OVERCAST-DISK ") == [f"OVERCAST-DISK sda {DISK_SECTORS}"], guest.log
        assert guest.find("OVERCAST-NIC ") == []
        assert not guest.find("OVERCAST-POWEROFF-IN"), guest.log
        # /init reports its own failures (a module that did not load, no button).
        assert not guest.find("overcast-guest:"), guest.log
        took = await power_button(guest, client)
    print(f"IDE disk boot: spawn -> marker {up:.2f} s, power button -> exit {took:.3f} s")


async def test_a_second_drive_tells_the_guest_to_power_off(guest_dir: Path) -> None:
    with tempfile.NamedTemporaryFile(prefix="oc-poweroff-", suffix=".img") as note:
        note.write(b"overcast-poweroff 2\n")
        note.truncate(1024 * 1024)
        note.flush()
        args = [
            *boot_disk(guest_dir / "guest.img", "ide-hd"),
            "-drive",
            f"file={note.name},format=raw,if=none,id=note",
            "-device",
            "virtio-blk-pci,drive=note",
        ]
        async with qemu(args, qmp=False) as (guest, _):
            up = await guest.wait_for(MARKER, BOOT_TIMEOUT)
            armed = await guest.wait_for("OVERCAST-POWEROFF-IN ", 5)
            assert guest.find("OVERCAST-POWEROFF-IN ") == ["OVERCAST-POWEROFF-IN 2"]
            assert f"OVERCAST-DISK vda {1024 * 1024 // 512}" in guest.find("OVERCAST-DISK ")
            code = await guest.wait_exit(2 + EXIT_TIMEOUT)
            gone = time.monotonic() - guest.spawned
    assert code == 0, guest.log
    assert guest.find("OVERCAST-POWERING-OFF timer"), guest.log
    # The timer, not something sooner, ended the guest.
    assert gone - armed >= 1.5, guest.log
    print(f"second-drive power-off: spawn -> marker {up:.2f} s, armed -> exit {gone - armed:.2f} s")


async def test_virtio_boot_disk_and_nics_show_in_the_guest(guest_dir: Path) -> None:
    e1000_mac = "52:54:00:0c:a5:01"
    virtio_mac = "52:54:00:0c:a5:02"
    args = [
        *boot_disk(guest_dir / "guest.img", "virtio-blk-pci"),
        # No traffic leaves QEMU: a hub port with nothing else on the hub, and
        # user networking restricted to the guest (its DHCP server only).
        "-netdev",
        "hubport,id=n0,hubid=0",
        "-device",
        f"e1000,netdev=n0,mac={e1000_mac}",
        "-netdev",
        "user,id=n1,restrict=on",
        "-device",
        f"virtio-net-pci,netdev=n1,mac={virtio_mac}",
    ]
    async with qemu(args) as (guest, client):
        up = await guest.wait_for(MARKER, BOOT_TIMEOUT)
        await guest.wait_for("OVERCAST-DEVICES-END", 5)
        assert guest.find("OVERCAST-DISK ") == [f"OVERCAST-DISK vda {DISK_SECTORS}"], guest.log
        nics = {
            mac: (ifname, driver)
            for _, ifname, mac, driver in map(str.split, guest.find("OVERCAST-NIC "))
        }
        assert {mac: driver for mac, (_, driver) in nics.items()} == {
            e1000_mac: "e1000",
            virtio_mac: "virtio_net",
        }, guest.log
        assert not guest.find("overcast-guest:"), guest.log
        # The lease from QEMU's own DHCP server shows the background udhcpc works.
        await guest.wait_for("OVERCAST-DHCP ", 10)
        assert guest.find("OVERCAST-DHCP ") == [f"OVERCAST-DHCP {nics[virtio_mac][0]} 10.0.2.15"]
        took = await power_button(guest, client)
    print(f"virtio disk boot: spawn -> marker {up:.2f} s, power button -> exit {took:.3f} s")


async def test_direct_kernel_boot_with_the_poweroff_flag(guest_dir: Path) -> None:
    cmdline = (guest_dir / "cmdline").read_text().strip()
    args = [
        "-kernel",
        str(guest_dir / "vmlinuz"),
        "-initrd",
        str(guest_dir / "initrd.img"),
        "-append",
        f"{cmdline} overcast.poweroff=1",
        "-nic",
        "none",
    ]
    async with qemu(args, qmp=False) as (guest, _):
        up = await guest.wait_for(MARKER, BOOT_TIMEOUT)
        await guest.wait_for("OVERCAST-POWEROFF-IN ", 5)
        assert guest.find("OVERCAST-POWEROFF-IN ") == ["OVERCAST-POWEROFF-IN 1"]
        assert guest.find("OVERCAST-DISK ") == []
        code = await guest.wait_exit(1 + EXIT_TIMEOUT)
    assert code == 0, guest.log
    assert guest.find("OVERCAST-POWERING-OFF timer"), guest.log
    print(f"direct kernel boot: spawn -> marker {up:.2f} s")
