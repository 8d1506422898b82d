"""QEMU in tests: the accelerator to use, a scratch directory that kills
what a test left running in it, and watching QEMU processes from the
process table and through pidfds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overcast.hypervisor.kvm import choose_accel
from overcast.hypervisor.spec import Accel

__all__ = ["accel", "alive", "process_end", "qemus_in", "scratch_dir"]


@pytest.fixture(scope="session")
def accel() -> Accel:
    """KVM if the probe finds it usable, else TCG (probed once per run)."""
    cache = Path(tempfile.mkdtemp(prefix="oc-kvm-"))
    try:
        return asyncio.run(choose_accel(cache)).accel
    finally:
        shutil.rmtree(cache)


def qemus_in(path: Path) -> list[int]:
    """Live (not zombie) QEMU processes whose command line mentions ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in argv and str(path).encode() in argv and state != "Z":
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: QEMU's daemon may wait to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_end(pid: int) -> asyncio.Future[float]:
    """The wall-clock time at which process ``pid`` ends, seen through a pidfd."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    fd = os.pidfd_open(pid)

    def ended() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        if not done.done():
            done.set_result(time.time())

    loop.add_reader(fd, ended)
    return done


@contextlib.contextmanager
def scratch_dir(prefix: str = "oc-") -> Iterator[Path]:
    """A short directory under /tmp (unix socket paths hold 107 bytes); on
    the way out, any QEMU left running in it is killed and it is removed."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        for pid in qemus_in(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
