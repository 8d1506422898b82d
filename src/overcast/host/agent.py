"""The host agent: this machine's guests, started, supervised and adopted.

It owns what runs here and nothing else: it does not know users, claims
or quotas (the manager decided those before asking). It turns a
:class:`GuestSpec` plus one network per NIC into taps on bridges, a VNC
display and a QEMU (through :class:`QemuDriver`), watches every guest until
it ends, and tells the ``on_exit`` sink.

Each guest has a run directory named after its server. QEMU is daemonized,
so guests outlive the agent; the directory is what lets a new agent run take
them back (:meth:`HostAgent.adopt_all`) and is the agent's only memory:

* ``agent.json`` — the taps and VNC address the agent chose, written before
  any tap or QEMU exists (and again before a hot-plugged NIC's tap is made,
  and after a removed one's is gone), so that whatever a crash leaves can
  be undone;
* ``ended.json`` — how and when the guest ended, written as soon as the end
  is seen and before it is reported, so a report that fails (or an agent
  that dies while reporting) is retried by the next run with the true facts;
* QEMU's own files (:class:`overcast.hypervisor.argv.RunFiles`).

The directory is removed once its guest's end has been reported. Beside the
run directories the agent touches a ``heartbeat`` file every second: a
guest that ended while no agent ran was alive when the last agent last beat,
which bounds when it ended (see :class:`GuestEnd`).

A QEMU found still paused before its first ``cont`` (QMP status
``prelaunch``) belongs to a start that an agent death cut short: adoption
kills it and reports its end (:data:`INTERRUPTED`), so that the manager
rolls that create back rather than count a guest that never runs as active.
A guest paused after it ran is adopted as it is, still paused: status
``paused`` (the owner's suspend), or ``prelaunch`` again when it was reset
while paused, which ``agent.json`` tells apart (its ``ran`` flag is set
once a start has completed).

Disks and NICs are hot-plugged into a running guest and out of it one verb
at a time per guest; a hot-plugged NIC's tap goes on its network's bridge
like any other, and goes away with the NIC or with the guest.

Every guest end — power-off from inside, a kill, a crash, an end that
happened while no agent ran, or an interrupted start — is reported exactly
once per agent run; the manager makes its processing idempotent, since a
run that dies mid-report reports again next time. A start that fails leaves nothing behind (no
process, no tap, no run directory) and reports nothing.

Not here: the QEMU command line and QMP (``overcast.hypervisor``), how the
manager reaches this agent (:mod:`overcast.host.client`), servers' records,
claims and events (the manager's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from overcast.host.cpulimit import CpuLimits
from overcast.hypervisor import net
from overcast.hypervisor.argv import RunFiles, nic_id
from overcast.hypervisor.process import find_qemu
from overcast.hypervisor.qemu import GuestHandle, QemuDriver
from overcast.hypervisor.spec import DiskSpec, GuestExit, GuestInfo, GuestSpec, NicSpec, VncSpec
from overcast.model.errors import (
    BusyError,
    FailedError,
    FullError,
    MissingError,
    OvercastError,
    UsageError,
)

__all__ = [
    "FENCED",
    "INTERRUPTED",
    "UNOBSERVED",
    "ExitSink",
    "GuestEnd",
    "GuestGate",
    "HostAgent",
    "RunningGuest",
    "VncAddress",
    "bridge_name",
    "tap_name",
]

log = logging.getLogger(__name__)

#: The reason of an end that happened while no agent ran.
UNOBSERVED = "unobserved"
#: The reason of an end this host caused by fencing itself (its lease was
#: lost): not the guest's doing, and the manager revives it elsewhere.
FENCED = "fenced"
#: The reason of a guest killed on adoption because its start never finished
#: (QEMU still paused before its first ``cont``).
INTERRUPTED = "start-interrupted"
VNC_FIRST_DISPLAY = 100
#: Seconds between heartbeats.
HEARTBEAT_PERIOD = 1.0
#: A tap name ends in the NIC's index as one digit.
_MAX_NICS = 10
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,4}")
_IFNAME_MAX = 15
_RECORD = "agent.json"
_ENDED = "ended.json"
_HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class GuestEnd:
    """A guest that ended: which, how and when (epoch seconds).

    ``reason`` is QEMU's (:class:`GuestExit`): ``guest-shutdown`` for a
    power-off from inside, ``killed`` for a kill or a crash, ... For an end
    that happened while no agent ran it is :data:`UNOBSERVED`, and ``at`` is
    when QEMU exited, read from its run directory when QEMU exited by itself
    (power-off, a signal it handles); after a SIGKILL it is the last moment
    the guest was known alive (the previous agent's last heartbeat, or the
    guest's last write to its run directory).
    """

    server: str
    reason: str
    guest_initiated: bool
    at: float


ExitSink = Callable[[GuestEnd], Awaitable[None]]


class GuestGate(Protocol):
    """The right to run guests (:class:`overcast.host.lease.HostLease`): a
    guest starts only once its key is claimed, and gives it back when it
    ends; ``valid()`` False means the host is fencing itself."""

    async def claim_guest(self, server: str) -> bool: ...

    async def release_guest(self, server: str) -> bool: ...

    def valid(self) -> bool: ...

    def holds(self, server: str) -> bool:
        """Whether the right to run ``server`` is still this host's: False
        once a fence took it (even if a new lease was joined since)."""
        ...


@dataclass(frozen=True)
class VncAddress:
    """Where this host serves a guest's console."""

    ip: str
    port: int


@dataclass(frozen=True)
class RunningGuest:
    """A guest as this host runs it: QEMU's view plus what the host chose."""

    info: GuestInfo
    vnc: VncAddress | None


def _hex(uuid_: str, digits: int) -> str:
    return uuid_.replace("-", "")[:digits]


def tap_name(server: str, index: int, prefix: str = "oc") -> str:
    """``prefix`` + the server's first hex digits + the NIC index: 15 characters.

    Derived from the server alone, so a new agent run finds the taps a dead
    one left."""
    return f"{prefix}{_hex(server, _IFNAME_MAX - 1 - len(prefix))}{index}"


def bridge_name(vlan: str | None, prefix: str = "oc") -> str:
    """The bridge of the public network (``vlan`` None) or of one VLAN.

    ``p`` and ``v`` are not hex digits, so no bridge is ever named like a tap."""
    if vlan is None:
        return f"{prefix}pub"
    return f"{prefix}v{_hex(vlan, _IFNAME_MAX - 1 - len(prefix))}"


@dataclass(frozen=True)
class _Record:
    """What the agent chose for one guest (``agent.json``); ``ran``: its
    start completed (QEMU was let run)."""

    taps: tuple[str, ...]
    vnc: VncAddress | None
    ran: bool = False

    def dump(self) -> dict[str, object]:
        return {
            "taps": list(self.taps),
            "vnc": dataclasses.asdict(self.vnc) if self.vnc else None,
            "ran": self.ran,
        }

    @classmethod
    def load(cls, data: dict[str, object]) -> _Record:
        taps = data.get("taps")
        vnc = data.get("vnc")
        return cls(
            taps=tuple(str(t) for t in taps) if isinstance(taps, list) else (),
            vnc=VncAddress(str(vnc["ip"]), int(vnc["port"])) if isinstance(vnc, dict) else None,
            ran=data.get("ran") is True,
        )


@dataclass(frozen=True)
class _Guest:
    handle: GuestHandle
    record: _Record


class HostAgent:
    """The guests of this host. Build one per run directory and process.

    ``ifprefix`` (1 to 5 lowercase letters and digits, starting with a
    letter) begins every tap and bridge name this agent makes; tests use a
    prefix of their own. With ``networking=False`` the agent makes no taps
    and NICs keep whatever the spec says (normally no host side).
    Call :meth:`close` once no verb is under way.
    """

    def __init__(
        self,
        rundir: Path,
        driver: QemuDriver,
        on_exit: ExitSink,
        *,
        vnc_listen: str = "127.0.0.1",
        networking: bool = True,
        ifprefix: str = "oc",
        heartbeat: float = HEARTBEAT_PERIOD,
        gate: GuestGate | None = None,
    ) -> None:
        if not _PREFIX.fullmatch(ifprefix):
            raise UsageError(f"interface prefix {ifprefix!r} is not 1 to 5 letters and digits")
        VncSpec(vnc_listen, 0)  # checks the address
        self.rundir = rundir.absolute()
        self.driver = driver
        self.on_exit = on_exit
        self.vnc_listen = vnc_listen
        self.networking = networking
        self.ifprefix = ifprefix
        self.heartbeat = heartbeat
        self.gate = gate
        self._guests: dict[str, _Guest] = {}
        #: Servers whose end is being seen or reported; a task per guest from
        #: its start (or adoption) until its end has been reported.
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._starting: set[str] = set()
        self._displays: set[int] = set()  # reserved by starts under way
        self._kept: set[str] = set()  # reports that failed in this run
        self._plugging: dict[str, asyncio.Lock] = {}  # one hot-plug verb per guest
        self._beating: asyncio.Task[None] | None = None
        self.cpu = CpuLimits(f"{ifprefix}-guests")
        self.rundir.mkdir(parents=True, exist_ok=True)
        # Read before this run beats: when the previous run was last alive.
        self._previous_beat = _mtime(self.rundir / _HEARTBEAT)

    def tap(self, server: str, index: int) -> str:
        return tap_name(server, index, self.ifprefix)

    def bridge(self, vlan: str | None) -> str:
        return bridge_name(vlan, self.ifprefix)

    # -- verbs -------------------------------------------------------------

    def running(self) -> set[str]:
        """The servers whose guests run here now."""
        return set(self._guests)

    async def start(self, spec: GuestSpec, networks: Sequence[str | None]) -> RunningGuest:
        """Start a guest; ``networks[i]`` is NIC i's VLAN (None: public).

        The spec's taps and VNC address are the agent's to choose (its VNC
        password is kept). Returns once the guest runs with every device
        confirmed, without waiting for its OS. On failure nothing is left:
        no process, no tap, no run directory, and nothing is reported.
        A guest this agent runs already is a :class:`BusyError`; one that
        runs here unsupervised is verified and taken over (the driver's
        idempotent start).
        """
        server = spec.uuid
        networks = tuple(networks)
        if len(networks) != len(spec.nics):
            raise UsageError(f"{len(spec.nics)} NICs but {len(networks)} networks")
        if len(spec.nics) > _MAX_NICS or any(n.slot >= _MAX_NICS for n in spec.nics):
            raise UsageError(f"a guest has at most {_MAX_NICS} NICs on this host: nic:0 to nic:9")
        ending = self._watchers.get(server)
        if ending is not None and server not in self._guests:
            await asyncio.wait({ending})  # its last run is still being reported
        if server in self._guests or server in self._starting:
            raise BusyError(f"server {server} already runs on this host")
        self._starting.add(server)
        self._beat()
        try:
            return await self._start(spec, networks)
        finally:
            self._starting.discard(server)

    async def powerdown(self, server: str) -> None:
        """Press the ACPI power button; the end, if the guest obeys, is reported."""
        await self.driver.powerdown(self._guest(server).handle)

    async def stop(self, server: str) -> None:
        """Kill the guest now; return once its end has been reported."""
        guest = self._guest(server)
        watcher = self._watchers.get(server)
        await self.driver.stop(guest.handle)
        if watcher is not None:
            await asyncio.wait({watcher})

    async def reset(self, server: str) -> None:
        """Hard reset: the guest reboots, its QEMU stays."""
        await self.driver.reset(self._guest(server).handle)

    async def pause(self, server: str) -> None:
        await self.driver.pause(self._guest(server).handle)

    async def resume(self, server: str) -> None:
        await self.driver.resume(self._guest(server).handle)

    async def update(
        self, server: str, *, cpu_mhz: int | None = None, vnc_password: str | None = None
    ) -> None:
        """Change what may change under a running guest: its CPU quota and
        its console password."""
        guest = self._guest(server)
        if cpu_mhz is not None:
            self.cpu.apply(server, guest.handle.pid, cpu_mhz)
        if vnc_password is not None and guest.record.vnc is not None:
            await guest.handle.qmp("change-vnc-password", {"password": vnc_password})

    async def info(self, server: str) -> RunningGuest:
        guest = self._guest(server)
        return RunningGuest(await self.driver.info(guest.handle), guest.record.vnc)

    # -- hot-plug ----------------------------------------------------------

    async def attach_disk(self, server: str, disk: DiskSpec) -> None:
        """Hot-plug ``disk`` into the running guest; return once QEMU has it."""
        async with self._plug_lock(server):
            await self.driver.plug_disk(self._guest(server).handle, disk)

    async def detach_disk(self, server: str, device: str) -> None:
        """Hot-unplug the disk on ``device`` (``scsi:0:1``, ``block:2``);
        return once QEMU has let go of it and of its image."""
        async with self._plug_lock(server):
            await self.driver.unplug_disk(self._guest(server).handle, device)

    async def attach_nic(self, server: str, nic: NicSpec, network: str | None) -> None:
        """Hot-plug ``nic`` (its ``index`` is the API's N) on ``network``
        (a VLAN; None: public): its tap on the network's bridge, then the
        card; return once QEMU has it. On failure the tap goes again."""
        if nic.slot >= _MAX_NICS:
            raise UsageError(f"a guest has at most {_MAX_NICS} NICs on this host: nic:0 to nic:9")
        async with self._plug_lock(server):
            guest = self._guest(server)
            if not self.networking:
                await self.driver.plug_nic(guest.handle, nic)
                return
            tap = self.tap(server, nic.slot)
            bound = dataclasses.replace(nic, tap=tap)
            new = tap not in guest.record.taps
            if not new and nic_id(nic.slot) in {
                n.device for n in (await self.driver.info(guest.handle)).nics
            }:
                # The card is there: the driver verifies it; its tap stays where it is.
                await self.driver.plug_nic(guest.handle, bound)
                return
            if new:  # recorded before it exists, so that a crash cannot leak it
                self._set_record(
                    server, dataclasses.replace(guest.record, taps=(*guest.record.taps, tap))
                )
            try:
                await net.ensure_bridge(self.bridge(network))
                await net.ensure_tap(tap, bridge=self.bridge(network))
                await self.driver.plug_nic(guest.handle, bound)
            except BaseException:
                if new:
                    await _remove_taps([tap])
                    self._forget_tap(server, tap)
                raise

    async def detach_nic(self, server: str, index: int) -> None:
        """Hot-unplug NIC ``index``, then remove its tap; return once both are gone."""
        async with self._plug_lock(server):
            guest = self._guest(server)
            await self.driver.unplug_nic(guest.handle, index)
            tap = self.tap(server, index)
            if tap in guest.record.taps:
                await _remove_taps([tap])
                self._forget_tap(server, tap)

    def _plug_lock(self, server: str) -> asyncio.Lock:
        self._guest(server)  # MissingError for a guest that does not run here
        return self._plugging.setdefault(server, asyncio.Lock())

    def _set_record(self, server: str, record: _Record) -> None:
        """Change a running guest's record, on disk first."""
        guest = self._guest(server)
        _write_json(guest.handle.rundir / _RECORD, record.dump())
        self._guests[server] = _Guest(guest.handle, record)

    def _forget_tap(self, server: str, tap: str) -> None:
        guest = self._guests.get(server)
        if guest is not None:
            taps = tuple(t for t in guest.record.taps if t != tap)
            with contextlib.suppress(OSError):  # a stale entry only costs a no-op removal
                self._set_record(server, dataclasses.replace(guest.record, taps=taps))

    # -- lifecycle ---------------------------------------------------------

    async def adopt_all(self) -> None:
        """Take back the guests a previous run left; report those that ended.

        Returns once every such end has been reported. Directories this run
        already handles are skipped, so calling it again is harmless.
        """
        self._beat()
        reports: list[asyncio.Task[None]] = []
        for rundir in sorted(p for p in self.rundir.iterdir() if p.is_dir()):
            server = rundir.name
            if not _is_uuid(server):
                log.warning("%s is not a guest's run directory; left alone", rundir)
                continue
            busy = self._guests.keys() | self._watchers.keys() | self._starting | self._kept
            if server in busy:
                continue
            record = _read_record(rundir)
            end = _read_end(server, rundir)
            if end is None:
                # Before adopt() cleans up, which changes the directory.
                alive = _exit_time(rundir) or max(self._previous_beat or 0.0, _newest_mtime(rundir))
                try:
                    handle = await self.driver.adopt(rundir)
                except MissingError:
                    log.info("guest %s ended while no agent ran (alive at %.3f)", server, alive)
                    end = GuestEnd(server, UNOBSERVED, False, min(alive, time.time()))
                except OvercastError as err:
                    log.error("cannot adopt guest %s: %s", server, err)
                    continue
                else:
                    if record is None:
                        record = _Record(tuple(handle.taps.values()), None)
                    self._remember_hot_taps(server, handle, record)
                    if not await self._never_ran(server, handle, record):
                        log.info("adopted guest %s (pid %d)", server, handle.pid)
                        self._track(server, handle, record)
                        continue
                    end = GuestEnd(server, INTERRUPTED, False, time.time())
            if record is None:  # a crash before agent.json: the taps it may have made
                record = _Record(tuple(self.tap(server, i) for i in range(_MAX_NICS)), None)
            task = asyncio.create_task(self._finish(server, end, record, rundir))
            self._watchers[server] = task
            reports.append(task)
        if reports:
            await asyncio.wait(reports)

    def _remember_hot_taps(self, server: str, handle: GuestHandle, record: _Record) -> None:
        """QEMU's command line names the taps of the NICs it started with; the
        record also has those of NICs hot-plugged since (tap names say which)."""
        slots = {self.tap(server, i): i for i in range(_MAX_NICS)}
        hot = {nic_id(slots[t]): t for t in record.taps if t in slots}
        self.driver.remember_taps(handle, hot)

    async def _never_ran(self, server: str, handle: GuestHandle, record: _Record) -> bool:
        """Whether an adopted QEMU is one whose start was cut short: still in
        ``prelaunch``, its devices never confirmed and ``cont`` never sent
        (a guest that ran and was then reset while paused is in
        ``prelaunch`` too, but its record says it ran).

        Nobody would ever resume it: the manager counts the start as failed
        or, not knowing, as done, and the guest would sit paused for good.
        So it is killed here (its end is then reported like any other and the
        manager rolls the create back). A guest this does not manage to
        query is adopted as usual; its watcher sees if it ended.
        """
        try:
            status = (await self.driver.info(handle)).status
        except OvercastError as err:
            log.warning("guest %s: cannot query its state on adoption: %s", server, err)
            return False
        if status != "prelaunch" or record.ran:
            return False
        log.warning("guest %s (pid %d) never ran: its start was interrupted", server, handle.pid)
        try:
            await self.driver.stop(handle)
        except OvercastError as err:
            log.error("guest %s: cannot kill its interrupted start: %s", server, err)
            return False
        return True

    async def close(self) -> None:
        """Let go of every guest without ending it (the agent is stopping).

        Ends already seen are reported first; the guests still running are
        adopted by the next run.
        """
        for server, task in self._watchers.items():
            guest = self._guests.get(server)
            if guest is not None and not guest.handle.exited:
                task.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)
        for guest in self._guests.values():
            with contextlib.suppress(OvercastError):
                await self.driver.close(guest.handle)
        self._guests.clear()
        self._watchers.clear()
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
            self._beating = None
            _touch(self.rundir / _HEARTBEAT)  # the guests let go were alive until now

    # -- starting ----------------------------------------------------------

    async def _start(self, spec: GuestSpec, networks: tuple[str | None, ...]) -> RunningGuest:
        server = spec.uuid
        rundir = self.rundir / server
        if _qemu_lives(rundir):
            return await self._take_over(spec, rundir)
        taps = tuple(self.tap(server, n.slot) for n in spec.nics) if self.networking else ()
        if self.gate is not None and not await self.gate.claim_guest(server):
            raise BusyError(f"guest {server} may not run here: another host holds it, or we fence")
        if rundir.exists():  # what a run that died left: its guest has ended
            if (rundir / _ENDED).exists():
                log.warning("guest %s: an unreported end is superseded by a new start", server)
                self._kept.discard(server)
            old = _read_record(rundir)
            await _remove_taps(set(old.taps if old else ()) - set(taps))
            shutil.rmtree(rundir)
        display = self._reserve_display() if spec.vnc is not None else None
        vnc = VncAddress(self.vnc_listen, 5900 + display) if display is not None else None
        record = _Record(taps, vnc)
        try:
            rundir.mkdir(parents=True)
            _write_json(rundir / _RECORD, record.dump())
            for tap, vlan in zip(taps, networks, strict=True):
                await net.ensure_bridge(self.bridge(vlan))
                await net.ensure_tap(tap, bridge=self.bridge(vlan))
            handle = await self.driver.start(
                self._bind(spec, record),
                rundir,
                before_run=lambda pid: asyncio.to_thread(self.cpu.apply, server, pid, spec.cpu_mhz),
            )
            try:
                info = await self.driver.info(handle)
            except BaseException:
                await self.driver.stop(handle)
                raise
        except BaseException:
            await _remove_taps(taps)
            shutil.rmtree(rundir, ignore_errors=True)
            raise
        finally:
            if display is not None:
                self._displays.discard(display)
        record = self._ran(rundir, record)
        self._track(server, handle, record)
        return RunningGuest(info, record.vnc)

    def _ran(self, rundir: Path, record: _Record) -> _Record:
        """``record`` of a guest whose start has completed, on disk too."""
        record = dataclasses.replace(record, ran=True)
        try:
            _write_json(rundir / _RECORD, record.dump())
        except OSError as err:  # the guest runs; only a reset-while-paused adoption would suffer
            log.error("guest %s: cannot record that it ran: %s", rundir.name, err)
        return record

    async def _take_over(self, spec: GuestSpec, rundir: Path) -> RunningGuest:
        """A QEMU runs for this server but nobody watches it: verify and adopt it."""
        record = _read_record(rundir)
        taps = {self.tap(spec.uuid, n.slot) for n in spec.nics}
        if record is None or (record.taps and set(record.taps) != taps):
            raise BusyError(f"a QEMU this agent did not start runs in {rundir}")
        handle = await self.driver.start(self._bind(spec, record), rundir)
        self._track(spec.uuid, handle, self._ran(rundir, record))
        return await self.info(spec.uuid)

    def _bind(self, spec: GuestSpec, record: _Record) -> GuestSpec:
        """``spec`` with the taps and VNC address of ``record``."""
        nics = spec.nics
        if record.taps:
            nics = tuple(dataclasses.replace(n, tap=self.tap(spec.uuid, n.slot)) for n in nics)
        vnc = None
        if spec.vnc is not None and record.vnc is not None:
            vnc = VncSpec(record.vnc.ip, record.vnc.port - 5900, spec.vnc.password)
        return dataclasses.replace(spec, nics=nics, vnc=vnc)

    def _reserve_display(self) -> int:
        """A VNC display no guest here uses and whose port is free now."""
        used = self._displays | {
            g.record.vnc.port - 5900 for g in self._guests.values() if g.record.vnc is not None
        }
        for display in range(VNC_FIRST_DISPLAY, 65536 - 5900):
            if display not in used and _port_free(self.vnc_listen, 5900 + display):
                self._displays.add(display)
                return display
        raise FullError(f"no free VNC port on {self.vnc_listen}")

    # -- watching and reporting -------------------------------------------

    def _guest(self, server: str) -> _Guest:
        guest = self._guests.get(server)
        if guest is None:
            raise MissingError(f"server {server} is not running on this host")
        return guest

    def _track(self, server: str, handle: GuestHandle, record: _Record) -> None:
        self._guests[server] = _Guest(handle, record)
        self._watchers[server] = asyncio.create_task(
            self._watch(server, handle, record), name=f"watch-{server}"
        )

    async def _watch(self, server: str, handle: GuestHandle, record: _Record) -> None:
        try:
            exit_: GuestExit = await self.driver.wait_exit(handle)
            # A fence kills first and may have joined with a new lease before
            # this end is seen: what matters is whether the guest's own
            # right survived, not whether some lease is valid now.
            fenced = self.gate is not None and not self.gate.holds(server)
            reason = FENCED if fenced else exit_.reason
            end = GuestEnd(server, reason, exit_.guest_initiated and not fenced, time.time())
            guest = self._guests.pop(server, None)
            self._plugging.pop(server, None)
            if guest is not None:  # with the taps of NICs hot-plugged since
                record = guest.record
            try:
                _write_json(handle.rundir / _ENDED, dataclasses.asdict(end))
            except OSError as err:
                log.error("guest %s: cannot record its end: %s", server, err)
            await self._report(end, record, handle.rundir)
        except Exception:
            log.exception("watching guest %s failed", server)
        finally:
            self._watchers.pop(server, None)

    async def _finish(self, server: str, end: GuestEnd, record: _Record, rundir: Path) -> None:
        try:
            await self._report(end, record, rundir)
        finally:
            self._watchers.pop(server, None)

    async def _report(self, end: GuestEnd, record: _Record, rundir: Path) -> None:
        """Free the guest's taps and its key, tell the sink, then forget the guest."""
        await _remove_taps(record.taps)
        self.cpu.release(end.server)
        if self.gate is not None:
            try:
                await self.gate.release_guest(end.server)
            except Exception as err:  # the key goes with the lease anyway
                log.warning("guest %s: cannot give its key back: %s", end.server, err)
        try:
            await self.on_exit(end)
        except Exception:
            log.exception("reporting the end of guest %s failed; kept for the next run", end.server)
            self._kept.add(end.server)
            return
        shutil.rmtree(rundir, ignore_errors=True)

    def _beat(self) -> None:
        """Start the heartbeat if it is not running."""
        if self._beating is None:
            self._beating = asyncio.create_task(self._heartbeat(), name="agent-heartbeat")

    async def _heartbeat(self) -> None:
        while True:
            try:
                _touch(self.rundir / _HEARTBEAT)
            except OSError as err:
                log.warning("cannot touch the heartbeat: %s", err)
            await asyncio.sleep(self.heartbeat)


# -- run directory files ---------------------------------------------------


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def _qemu_lives(rundir: Path) -> bool:
    found = find_qemu(RunFiles.at(rundir))
    if found is None:
        return False
    os.close(found[1])
    return True


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_record(rundir: Path) -> _Record | None:
    data = _read_json(rundir / _RECORD)
    try:
        return _Record.load(data) if data is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def _read_end(server: str, rundir: Path) -> GuestEnd | None:
    data = _read_json(rundir / _ENDED)
    if data is None:
        return None
    at = data.get("at")
    return GuestEnd(
        server=server,
        reason=str(data.get("reason", UNOBSERVED)),
        guest_initiated=bool(data.get("guest_initiated", False)),
        at=float(at) if isinstance(at, int | float) else _newest_mtime(rundir),
    )


def _exit_time(rundir: Path) -> float | None:
    """When QEMU exited, if it did so itself: an exiting QEMU removes its
    pidfile and QMP socket, and that removal is the directory's last change
    (the agent that would write more is not running). None when the pidfile
    is still there: QEMU runs, or was killed (SIGKILL removes nothing)."""
    if (rundir / RunFiles(rundir).pidfile.name).exists():
        return None
    return _mtime(rundir)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _newest_mtime(rundir: Path) -> float:
    """When the guest last wrote to its run directory (its serial console and logs)."""
    times = [t for p in rundir.iterdir() if p.is_file() and (t := _mtime(p)) is not None]
    return max(times, default=_mtime(rundir) or 0.0)


def _touch(path: Path) -> None:
    path.touch()  # sets the time of one that exists


def _port_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` is free to listen on; FailedError if no port can be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise FailedError(f"cannot serve VNC on {host}: {err.strerror}") from err
    return True


async def _remove_taps(taps: Iterable[str]) -> None:
    async def remove(tap: str) -> None:
        try:
            await net.remove_link(tap)
        except OvercastError as err:
            log.warning("cannot remove tap %s: %s", tap, err)

    await asyncio.gather(*(remove(tap) for tap in taps))
