"""Whether KVM is worth using here: a timed probe boot, cached.

``/dev/kvm`` existing proves little. On some machines it is a paravirtual
KVM without hardware virtualization where a guest runs about a million
instructions a second (a hundred times slower than TCG), and some KVMs
refuse ``-cpu host`` outright. So the probe runs exactly the accelerator
arguments the driver would use (:func:`overcast.hypervisor.argv.accel_argv`)
on a tiny firmware of our own: a loop of a few million instructions that
then writes to QEMU's ``isa-debug-exit`` port. Real KVM finishes in a few
milliseconds past QEMU's start-up; the slow kind misses the deadline and is
killed. Either way the probe costs at most about a second, and its verdict
is cached in a file keyed by the kernel, the QEMU binary and the device, so
a restart does not pay it again.

Not here: choosing per guest (every guest on a host uses one accelerator).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from overcast.hypervisor.argv import QEMU, accel_argv
from overcast.hypervisor.spec import Accel

__all__ = ["CACHE_FILE", "KvmVerdict", "ProbeResult", "choose_accel", "run_probe", "write_firmware"]

CACHE_FILE = "kvm-probe.json"
#: Loop iterations (two instructions each) the probe guest runs.
_LOOPS = 2_000_000
#: Wall-clock limit for the probe, QEMU's own start-up included.
_DEADLINE = 1.0
#: Value written to isa-debug-exit; QEMU exits with (value << 1) | 1.
_EXIT_VALUE = 0x21
_EXIT_STATUS = (_EXIT_VALUE << 1) | 1


@dataclass(frozen=True)
class KvmVerdict:
    """The accelerator to use and why; ``seconds`` is the probe's wall time."""

    accel: Accel
    reason: str
    seconds: float | None = None
    cached: bool = False


async def choose_accel(
    cache_dir: Path, *, qemu: str = QEMU, device: Path = Path("/dev/kvm")
) -> KvmVerdict:
    """``kvm`` if it is present and fast, else ``tcg``; probes at most once per key."""
    if not os.access(device, os.R_OK | os.W_OK):
        return KvmVerdict("tcg", f"{device} is missing or not accessible")
    binary = shutil.which(qemu)
    if binary is None:
        return KvmVerdict("tcg", f"{qemu} is not installed")
    key = _cache_key(Path(binary), device)
    cache = cache_dir / CACHE_FILE
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    verdict = await _probe(binary, cache_dir)
    _write_cache(cache, key, verdict)
    return verdict


def _cache_key(binary: Path, device: Path) -> str:
    real = binary.resolve()
    info = real.stat()
    return "|".join(
        [
            os.uname().release,
            str(real),
            str(info.st_mtime_ns),
            str(info.st_size),
            str(device.stat().st_rdev),
        ]
    )


def _read_cache(cache: Path, key: str) -> KvmVerdict | None:
    try:
        data = json.loads(cache.read_text())
        if data.get("key") != key or data.get("accel") not in ("kvm", "tcg"):
            return None
        seconds = data.get("seconds")
        return KvmVerdict(
            accel=data["accel"],
            reason=str(data.get("reason", "")),
            seconds=float(seconds) if seconds is not None else None,
            cached=True,
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _write_cache(cache: Path, key: str, verdict: KvmVerdict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    data = {"key": key, **asdict(verdict)}
    del data["cached"]
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(cache)


def _firmware() -> bytes:
    """64 KiB of BIOS whose reset vector (offset 0xfff0, real mode) runs::

    mov ecx, _LOOPS ; 1: dec ecx ; jnz 1b ; mov al, _EXIT_VALUE ; out 0xf4, al
    """
    code = (
        b"\x66\xb9" + struct.pack("<I", _LOOPS)  # mov ecx, imm32
        + b"\x66\x49"  # dec ecx
        + b"\x75\xfc"  # jnz back to dec
        + bytes([0xB0, _EXIT_VALUE])  # mov al, imm8
        + b"\xe6\xf4"  # out 0xf4, al
    )  # fmt: skip
    image = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    image[0xFFF0 : 0xFFF0 + len(code)] = code
    return bytes(image)


def write_firmware(cache_dir: Path) -> Path:
    """Write the probe firmware into ``cache_dir``; returns its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"kvm-probe-{os.getpid()}.bin"
    path.write_bytes(_firmware())
    return path


async def _probe(binary: str, cache_dir: Path) -> KvmVerdict:
    bios = write_firmware(cache_dir)
    try:
        result = await run_probe(binary, bios, "kvm")
    finally:
        bios.unlink(missing_ok=True)
    if result.ok:
        return KvmVerdict("kvm", f"KVM ran the probe in {result.seconds} s", result.seconds)
    return KvmVerdict("tcg", f"KVM is unusable: {result.detail}", result.seconds)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    seconds: float
    detail: str


async def run_probe(binary: str, bios: Path, accel: Accel) -> ProbeResult:
    """Boot the probe firmware ``bios`` under ``accel``; ok if it ran to its exit in time."""
    argv = [
        binary,
        "-nodefaults",
        "-no-user-config",
        "-machine", "q35",
        *accel_argv(accel),
        "-m", "16",
        "-display", "none",
        "-bios", str(bios),
        "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
    ]  # fmt: skip
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(_DEADLINE):
            _, stderr = await proc.communicate()
    except TimeoutError:
        seconds = round(time.monotonic() - began, 3)
        return ProbeResult(
            False, seconds, f"too slow: {2 * _LOOPS} instructions took over {_DEADLINE} s"
        )
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    seconds = round(time.monotonic() - began, 3)
    if proc.returncode != _EXIT_STATUS:
        lines = stderr.decode(errors="replace").strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()]
        detail = (errors or lines or [f"exit status {proc.returncode}"])[0]
        return ProbeResult(False, seconds, f"probe failed: {detail}")
    return ProbeResult(True, seconds, "")
