"""The fencing watchdog: a tiny process that kills this host's guests once
the host's lease may have ended, whether or not the host agent is alive.

The agent's :class:`overcast.host.lease.HostLease` fences by itself, but a
hung agent (stopped, deadlocked, starved) cannot: so, as Proxmox does with
its watchdog, a second process that shares nothing with the agent but a
file does it too. After each renewal the agent writes ``DATA/lease`` (one
JSON object, replaced atomically): until when the lease surely lives, on
the wall clock and on ``CLOCK_BOOTTIME``. Every ~150 ms this reads the
clocks, *then* the file, and when either clock is past its point (or the
file is missing or garbled after having once been good, or was written in
another boot) it SIGKILLs every QEMU whose pidfile is ``DATA/run/*/qemu.pid``
— and keeps doing so while the file says so, so a QEMU that appears late
dies too.

Why both clocks: the wall clock is what a person reads in the file, but it
can be stepped back; ``CLOCK_BOOTTIME`` is the same for every process on
the machine, never steps and, unlike ``CLOCK_MONOTONIC``, keeps counting
across a suspend. Either one being past fences (a forward step of the wall
clock costs a needless fence, never a double run). Why clocks before the
file: a file read after the clocks is at least as new as the clocks, so a
renewal written before the old point passed is never missed.

A pid is signalled through a pidfd opened before its command line is
checked (a QEMU naming that run directory), so a reused pid is never killed.

Standard library only, and no import of the rest of overcast: this must run
when the agent's dependencies are broken. The agent imports the file format
and :func:`kill_guests` from here, so both sides share one definition.

Not here: deciding to renew or join (the agent's lease), a hardware or
kernel watchdog that would reset the machine if this process died.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "LEASE_FILE",
    "PERIOD",
    "RUN_DIR",
    "Clocks",
    "Validity",
    "kill_guests",
    "main",
    "read_validity",
    "watch",
    "write_validity",
]

log = logging.getLogger("overcast.host.watchdog")

#: Under the data directory: the lease record and the guests' run directories.
LEASE_FILE = "lease"
RUN_DIR = "run"
#: Seconds between two looks at the lease record.
PERIOD = 0.15
_LOCK = "watchdog.lock"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_BOOT_ID = _boot_id()


class Clocks(NamedTuple):
    """One instant on both clocks, and the boot it belongs to."""

    wall: float
    boot: float
    boot_id: str

    @classmethod
    def now(cls) -> Clocks:
        return cls(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME), _BOOT_ID)


@dataclass(frozen=True)
class Validity:
    """The lease record: until when this host may run guests.

    ``renewed`` is the wall-clock time at which the renewal this derives
    from was *sent* (the lease at etcd ends no earlier than that plus its
    TTL); 0 when there is none (a fenced host).
    """

    host: str
    lease: int
    valid_until: float
    boottime_until: float
    boot_id: str
    renewed: float

    def passed(self, now: Clocks) -> bool:
        """Whether the host may no longer run guests at ``now``."""
        return (
            now.wall >= self.valid_until
            or now.boot_id != self.boot_id
            or now.boot >= self.boottime_until
        )

    def remaining(self, now: Clocks) -> float:
        """Seconds until :meth:`passed` (0 if it has)."""
        if self.passed(now):
            return 0.0
        return min(self.valid_until - now.wall, self.boottime_until - now.boot)


def write_validity(path: Path, validity: Validity) -> None:
    """Replace the record atomically: a reader sees the old or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(validity)))
    os.replace(tmp, path)


def read_validity(path: Path) -> Validity | None:
    """The record, or None if it is missing or garbled."""
    try:
        data = json.loads(path.read_text())
        return Validity(
            host=str(data["host"]),
            lease=int(data["lease"]),
            valid_until=float(data["valid_until"]),
            boottime_until=float(data["boottime_until"]),
            boot_id=str(data["boot_id"]),
            renewed=float(data["renewed"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _is_qemu_of(pid: int, rundir: Path) -> bool:
    """Whether ``pid`` is a QEMU whose command line names ``rundir`` (QEMU
    options double commas in paths)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not argv or b"qemu-system" not in os.path.basename(argv[0]):
        return False
    names = {f"{rundir}/".encode(), f"{rundir}/".replace(",", ",,").encode()}
    return any(name in arg for arg in argv[1:] for name in names)


def kill_guests(run: Path, wait: float = 1.0) -> list[tuple[int, Path]]:
    """SIGKILL every QEMU of ``run/*/qemu.pid``; wait up to ``wait`` seconds
    for them to end. The ``(pid, run directory)`` of each one signalled."""
    run = run.absolute()
    signalled: list[tuple[int, Path, int]] = []
    try:
        pidfiles = sorted(run.glob("*/qemu.pid"))
    except OSError:
        pidfiles = []
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text().strip())
            pidfd = os.pidfd_open(pid)
        except (OSError, ValueError):
            continue
        try:
            if _is_qemu_of(pid, pidfile.parent):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                signalled.append((pid, pidfile.parent, pidfd))
                continue
        except ProcessLookupError:
            pass  # gone already
        except OSError as err:  # not ours to kill (EPERM): say so, carry on with the others
            log.error("fence: cannot kill QEMU pid %d of %s: %s", pid, pidfile.parent, err)
        os.close(pidfd)
    poller = select.poll()
    for _, _, pidfd in signalled:
        poller.register(pidfd, select.POLLIN)
    ended: set[int] = set()
    deadline = time.monotonic() + wait
    while len(ended) < len(signalled) and (left := deadline - time.monotonic()) > 0:
        for pidfd, _ in poller.poll(left * 1000):
            poller.unregister(pidfd)
            ended.add(pidfd)
    for pid, rundir, pidfd in signalled:
        if pidfd in ended:
            log.warning("fence: killed QEMU pid %d of %s", pid, rundir)
        else:
            log.error(
                "fence: QEMU pid %d of %s has not ended %.1f s after SIGKILL", pid, rundir, wait
            )
        os.close(pidfd)
    return [(pid, rundir) for pid, rundir, _ in signalled]


def watch(data: Path, period: float = PERIOD) -> None:
    """Watch ``data``'s lease record forever, fencing whenever it says so."""
    path, run = data / LEASE_FILE, data / RUN_DIR
    armed = False  # a good record has been seen: its disappearance is a fence
    fencing = False
    while True:
        if not data.is_dir():  # the host was taken apart: nothing left to guard
            log.warning("%s is gone; the watchdog stops", data)
            return
        now = Clocks.now()  # before the file: see the module's docstring
        validity = read_validity(path)
        why = ""
        if validity is not None:
            armed = True
            if validity.passed(now):
                why = f"lease {validity.lease:x} of host {validity.host!r} has ended"
        elif armed:
            why = "the lease record is missing or garbled"
        if why and not fencing:
            log.error("fencing %s: %s", data, why)
        elif fencing and not why:
            log.warning("%s: the lease is valid again", data)
        fencing = bool(why)
        if fencing:
            try:
                kill_guests(run)
            except Exception:  # this loop must outlive anything one sweep meets
                log.exception("fence: the sweep of %s failed", run)
        pause = period
        if validity is not None and not fencing:  # wake at the point, not up to a period late
            pause = min(period, validity.remaining(Clocks.now()) + 0.001)
        time.sleep(pause)


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m overcast.host.watchdog",
        description="Kill this host's guests whenever its etcd lease may have ended.",
    )
    parser.add_argument("--data", required=True, type=Path, help="the host agent's data directory")
    parser.add_argument("--period", type=float, default=PERIOD, help="seconds between looks")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    data: Path = args.data.absolute()
    data.mkdir(parents=True, exist_ok=True)
    lock = open(data / _LOCK, "a")  # noqa: SIM115 held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another watchdog already watches %s", data)
        return 1
    log.info("watching %s (pid %d, every %.3f s)", data, os.getpid(), args.period)
    with contextlib.suppress(KeyboardInterrupt):
        watch(data, args.period)
    return 0


if __name__ == "__main__":
    sys.exit(main())
