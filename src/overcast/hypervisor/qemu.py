"""The QEMU driver: a flat list of verbs on guests.

:class:`QemuDriver` starts a guest from a :class:`GuestSpec` (paused, every
disk and NIC confirmed over QMP, then running), adopts one again after an
overcast restart, and powers down, kills, resets, pauses, resumes, watches
and reports on it. Verbs take and return a :class:`GuestHandle` or frozen
dataclasses of :mod:`overcast.hypervisor.spec`. Each guest is a daemonized
QEMU, not our child: it outlives overcast. Every step has a timeout.

Errors (all kinds of ``overcast.model.errors``)::

    OvercastError
     ├─ UsageError        the spec cannot run on this machine (argv), before any side effect
     ├─ MissingError      adopt: no QEMU runs in that run directory any more
     ├─ BusyError         start: a different guest already runs in that run directory
     ├─ SystemFault       a verb on a handle that was closed (a bug of the caller)
     └─ FailedError       QEMU refused: it would not start (its own message, e.g.
         │                'Failed to get "write" lock'), a command got an error reply
         │                (qemu.qmp ExecuteError) or a device is not as asked. QEMU is
         │                as it was; a failed start leaves no process and no file.
         └─ GuestLostError  we lost QEMU: the connection broke or a call timed out
                          (ConnectError, ExecInterruptedError, EOF, timeout). The guest
                          has probably ended: wait_exit() tells, and cleans up.

Not here: the command line (:mod:`.argv`), processes and pidfiles
(:mod:`.process`), the QMP connection (:mod:`.guest`), the accelerator
choice (:mod:`.kvm`), taps and bridges (:mod:`.net`), and every decision
about servers, claims and records (the host layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from overcast.hypervisor.argv import (
    QEMU,
    RunFiles,
    disk_driver,
    disk_id,
    nic_driver,
    nic_id,
    qemu_argv,
)
from overcast.hypervisor.guest import (
    GuestHandle,
    GuestLostError,
    JsonDict,
    as_dict,
    as_int,
    as_list,
)
from overcast.hypervisor.net import tap_counters
from overcast.hypervisor.process import find_qemu, kill_and_wait, spawn
from overcast.hypervisor.spec import (
    Accel,
    DiskStats,
    GuestExit,
    GuestInfo,
    GuestSpec,
    NicStats,
)
from overcast.model.errors import BusyError, FailedError, MissingError

__all__ = ["GuestHandle", "GuestLostError", "QemuDriver"]

log = logging.getLogger(__name__)

_PERIPHERAL = "/machine/peripheral/"


class QemuDriver:
    """Verbs on QEMU guests. ``accel`` comes from :func:`overcast.hypervisor.kvm.choose_accel`.

    ``timeout`` bounds every step: QEMU's start-up, each QMP call, a kill.
    """

    #: Declared, not guessed: what the layers above may ask of this driver.
    CAN_MIGRATE = False
    CAN_ADOPT = True

    def __init__(self, accel: Accel, *, timeout: float = 10.0, qemu: str = QEMU) -> None:
        self.accel: Accel = accel
        self.timeout = timeout
        self.qemu = qemu

    def argv(self, spec: GuestSpec, rundir: Path) -> list[str]:
        """The exact command line :meth:`start` runs (pure; for logs and benchmarks)."""
        args = qemu_argv(spec, RunFiles.at(rundir).rundir, self.accel)
        args[0] = self.qemu
        return args

    async def start(self, spec: GuestSpec, rundir: Path) -> GuestHandle:
        """Start ``spec`` paused, confirm its devices over QMP, run it; return when running.

        Idempotent: if this run directory already has a live QEMU with these
        devices it is adopted (and resumed) instead of started twice; one
        with other devices is a :class:`BusyError`. On any failure, and on
        cancellation, the new QEMU is killed and its files removed first.
        """
        argv = self.argv(spec, rundir)  # UsageError before any side effect
        files = RunFiles.at(rundir)
        existing = await self._find(files)
        if existing is not None:
            return await self._resume_existing(existing, spec)
        created = not files.rundir.exists()
        files.rundir.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        guest: GuestHandle | None = None
        try:
            await spawn(argv, files, self.timeout)
            found = find_qemu(files)
            if found is None:
                raise FailedError(f"QEMU ended as it started; see {files.log}")
            guest = await GuestHandle.connect(files, *found, label=spec.uuid, limit=self.timeout)
            await self._confirm(guest, spec)
            if spec.vnc is not None and spec.vnc.password is not None:
                await guest.qmp("change-vnc-password", {"password": spec.vnc.password})
            await guest.qmp("cont")
            status = await _status(guest)
            if status != "running":
                raise FailedError(f"QEMU is {status!r}, not running, after cont")
        except BaseException:
            await self._discard(files, guest, created)
            raise
        elapsed = (time.perf_counter() - began) * 1000
        guest.log.info("QEMU pid %d running after %.0f ms", guest.pid, elapsed)
        return guest

    async def adopt(self, rundir: Path) -> GuestHandle:
        """Reconnect to the QEMU running in ``rundir`` (after an overcast restart).

        :class:`MissingError` if none runs there any more; its stale runtime
        files are removed, its logs kept. QEMU serves one QMP client at a
        time: a handle still open on the guest makes this time out
        (:class:`GuestLostError`), so close it first.
        """
        files = RunFiles.at(rundir)
        guest = await self._find(files)
        if guest is None:
            raise MissingError(f"no QEMU runs in {files.rundir}")
        return guest

    async def powerdown(self, guest: GuestHandle) -> None:
        """Press the ACPI power button; the guest decides whether to power off."""
        await guest.qmp("system_powerdown")

    async def stop(self, guest: GuestHandle) -> float:
        """Kill QEMU (SIGKILL) and clean up; milliseconds from the signal to the
        process's end (0 if it had already ended)."""
        if guest.exited:
            await guest.finish()
            return 0.0
        began = time.perf_counter()
        guest.kill()
        try:
            async with asyncio.timeout(self.timeout):
                await guest.wait_gone()
        except TimeoutError as err:
            raise FailedError(
                f"QEMU pid {guest.pid} survived SIGKILL for {self.timeout} s"
            ) from err
        elapsed = (time.perf_counter() - began) * 1000
        await guest.finish()
        return elapsed

    async def reset(self, guest: GuestHandle) -> None:
        """Hard reset: the guest reboots at once, the process stays."""
        await guest.qmp("system_reset")

    async def pause(self, guest: GuestHandle) -> None:
        await guest.qmp("stop")

    async def resume(self, guest: GuestHandle) -> None:
        await guest.qmp("cont")

    async def wait_exit(self, guest: GuestHandle) -> GuestExit:
        """Wait until QEMU has ended, however it ended; remove its runtime files.

        Safe from several tasks at once and again after the end; cancelling
        it changes nothing.
        """
        return await guest.finish()

    async def close(self, guest: GuestHandle) -> None:
        """Forget ``guest`` without ending it (overcast shutting down): QEMU runs on
        and :meth:`adopt` finds it again. Cancel any :meth:`wait_exit` first."""
        await guest.close()

    async def info(self, guest: GuestHandle) -> GuestInfo:
        """Run state and I/O counters of every disk and NIC, as QEMU has them now."""
        status, blocks, blockstats, peripherals = await asyncio.gather(
            guest.qmp("query-status"),
            guest.qmp("query-block"),
            guest.qmp("query-blockstats"),
            guest.qmp("qom-list", {"path": _PERIPHERAL}),
        )
        inserted = {_qdev(b): as_dict(b.get("inserted")) for b in map(as_dict, as_list(blocks))}
        disks = []
        for entry in map(as_dict, as_list(blockstats)):
            device = _qdev(entry)
            if device not in inserted:
                continue
            stats = as_dict(entry.get("stats"))
            disks.append(
                DiskStats(
                    device=device,
                    image=str(inserted[device].get("file", "")),
                    readonly=bool(inserted[device].get("ro", False)),
                    read_bytes=as_int(stats.get("rd_bytes")),
                    write_bytes=as_int(stats.get("wr_bytes")),
                    read_requests=as_int(stats.get("rd_operations")),
                    write_requests=as_int(stats.get("wr_operations")),
                )
            )
        names = [str(as_dict(p).get("name")) for p in as_list(peripherals)]
        nics = sorted(
            (n for n in names if n[:3] == "nic" and n[3:].isdigit()), key=lambda n: int(n[3:])
        )
        state = as_dict(status)
        return GuestInfo(
            uuid=guest.uuid,
            name=guest.name,
            pid=guest.pid,
            status=str(state.get("status")),
            running=bool(state.get("running")),
            disks=tuple(sorted(disks, key=lambda d: d.device)),
            nics=tuple([await _nic_stats(guest, nic) for nic in nics]),
        )

    # -- start and adopt machinery ------------------------------------------------------

    async def _find(self, files: RunFiles) -> GuestHandle | None:
        """The live QEMU of this run directory, connected; None (stale files removed) if none."""
        found = find_qemu(files)
        if found is not None:
            return await GuestHandle.connect(
                files, *found, label=files.rundir.name, limit=self.timeout
            )
        for path in files.runtime:
            path.unlink(missing_ok=True)
        return None

    async def _resume_existing(self, guest: GuestHandle, spec: GuestSpec) -> GuestHandle:
        try:
            await self._confirm(guest, spec)
        except FailedError as err:
            await guest.close()
            raise BusyError(f"another guest runs in {guest.rundir}: {err.message}") from err
        if await _status(guest) in ("prelaunch", "paused"):
            if spec.vnc is not None and spec.vnc.password is not None:
                await guest.qmp("change-vnc-password", {"password": spec.vnc.password})
            await guest.qmp("cont")
        guest.log.info("QEMU pid %d was already running; adopted", guest.pid)
        return guest

    async def _confirm(self, guest: GuestHandle, spec: GuestSpec) -> None:
        """Check over QMP that QEMU has every disk and NIC of ``spec``, as asked."""
        if guest.uuid != spec.uuid:
            raise FailedError(f"QEMU runs guest {guest.uuid}, not {spec.uuid}")
        blocks = {_qdev(b): b for b in map(as_dict, as_list(await guest.qmp("query-block")))}
        disk_paths = [_PERIPHERAL + disk_id(d) for d in spec.disks]
        nic_paths = [_PERIPHERAL + nic_id(i) for i in range(len(spec.nics))]
        kinds = await asyncio.gather(*(_qom(guest, p, "type") for p in disk_paths + nic_paths))
        macs = await asyncio.gather(*(_qom(guest, p, "mac") for p in nic_paths))
        for disk, kind in zip(spec.disks, kinds, strict=False):
            medium = blocks.get(disk_id(disk), {}).get("inserted")
            if kind != disk_driver(disk) or not isinstance(medium, dict):
                raise FailedError(f"QEMU has no {disk_driver(disk)} {disk.name} with a medium")
            if medium.get("file") != str(disk.image) or medium.get("ro") != disk.readonly:
                raise FailedError(f"QEMU attached {disk.name} with another image or mode")
        nic_kinds = kinds[len(spec.disks) :]
        for index, (nic, kind, mac) in enumerate(zip(spec.nics, nic_kinds, macs, strict=True)):
            if kind != nic_driver(nic.model) or mac != nic.mac:
                raise FailedError(f"QEMU has no {nic_driver(nic.model)} nic:{index} MAC {nic.mac}")

    async def _discard(self, files: RunFiles, guest: GuestHandle | None, created: bool) -> None:
        """Undo a failed start: kill the QEMU it made, remove every file it left."""
        if guest is not None:
            guest.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await guest.finish()
        elif (found := find_qemu(files)) is not None:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timeout):
                        await kill_and_wait(found[1])
            finally:
                os.close(found[1])
        for path in files.all:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                files.rundir.rmdir()


async def _status(guest: GuestHandle) -> str:
    return str(as_dict(await guest.qmp("query-status")).get("status"))


async def _qom(guest: GuestHandle, path: str, prop: str) -> object:
    return await guest.qmp("qom-get", {"path": path, "property": prop})


async def _nic_stats(guest: GuestHandle, device: str) -> NicStats:
    path = _PERIPHERAL + device
    kind, mac = await asyncio.gather(_qom(guest, path, "type"), _qom(guest, path, "mac"))
    tap = guest.taps.get(device)
    counters = tap_counters(tap) if tap is not None else None
    return NicStats(
        device=device,
        model=str(kind),
        mac=str(mac),
        tap=tap,
        # The tap's transmit is the guest's receive.
        rx_bytes=counters["tx_bytes"] if counters else None,
        tx_bytes=counters["rx_bytes"] if counters else None,
        rx_packets=counters["tx_packets"] if counters else None,
        tx_packets=counters["rx_packets"] if counters else None,
    )


def _qdev(block: JsonDict) -> str:
    """The device id of a query-block(stats) entry. Its ``qdev`` is the id for
    most devices but a QOM path for virtio ones
    (``/machine/peripheral/drive-block-2/virtio-backend``)."""
    qdev = str(block.get("qdev", ""))
    return qdev[len(_PERIPHERAL) :].split("/")[0] if qdev.startswith(_PERIPHERAL) else qdev
