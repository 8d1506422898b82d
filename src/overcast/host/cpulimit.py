"""The ``cpu`` key made real: a guest gets at most that many MHz of CPU time.

QEMU has no such knob, so each guest's process goes into a cgroup of its
own whose CPU quota is ``cpu / MHZ_PER_CORE`` of one core per period:
``cpu.max`` under cgroup v2 where the cpu controller is enabled, else the
v1 ``cpu`` hierarchy's ``cpu.cfs_quota_us``. Where neither can be written
the limit is not enforced, and the log says so once per guest.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from overcast.model.server import MHZ_PER_CORE

__all__ = ["CpuLimits"]

log = logging.getLogger(__name__)

PERIOD_US = 100_000
_ROOT = Path("/sys/fs/cgroup")


class CpuLimits:
    """The cgroups of one host's guests, under ``<hierarchy>/<name>/``."""

    def __init__(self, name: str = "overcast", root: Path = _ROOT) -> None:
        self.root = root
        self.name = name
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and "cpu" in controllers.read_text().split():
            self.version: int | None = 2
            self.base: Path | None = root / name
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():
            self.version = 1
            self.base = root / "cpu" / name
        else:
            self.version = None
            self.base = None

    def quota_us(self, cpu_mhz: int) -> int:
        return max(1000, cpu_mhz * PERIOD_US // MHZ_PER_CORE)

    def apply(self, server: str, pid: int, cpu_mhz: int) -> bool:
        """Cap ``pid`` (the guest's QEMU) at ``cpu_mhz``; False if not enforced.

        ``cpu_mhz`` 0 asks for no limit (the API never sends it; tools may).
        """
        if cpu_mhz == 0:
            return False
        if self.base is None:
            log.warning("guest %s: cpu %d MHz is not enforced: no cpu cgroup", server, cpu_mhz)
            return False
        group = self.base / server
        quota = self.quota_us(cpu_mhz)
        try:
            if self.version == 2:
                self.base.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):  # may be enabled already
                    (self.root / "cgroup.subtree_control").write_text("+cpu")
                    (self.base / "cgroup.subtree_control").write_text("+cpu")
                group.mkdir(exist_ok=True)
                (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                self.base.mkdir(exist_ok=True)
                group.mkdir(exist_ok=True)
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            # Every thread of QEMU (vCPUs included) follows the process.
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as err:
            log.warning("guest %s: cpu %d MHz is not enforced: %s", server, cpu_mhz, err)
            return False
        log.info(
            "guest %s: cpu capped at %d MHz (%d us per %d us)", server, cpu_mhz, quota, PERIOD_US
        )
        return True

    def release(self, server: str) -> None:
        """Remove an ended guest's cgroup (empty once its process is gone)."""
        if self.base is not None:
            with contextlib.suppress(OSError):
                (self.base / server).rmdir()
