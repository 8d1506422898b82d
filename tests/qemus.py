"""QEMU in tests: the accelerator to use, and finding the QEMU processes a
test started from the process table."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from overcast.hypervisor.kvm import choose_accel
from overcast.hypervisor.spec import Accel

__all__ = ["accel", "qemus_in"]


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
