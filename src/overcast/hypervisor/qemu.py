"""The QEMU driver: a flat list of verbs on guests.

:class:`QemuDriver` starts a guest from a :class:`GuestSpec` (paused, every
disk and NIC confirmed over QMP, then running), adopts one again after an
overcast restart, and powers down, kills, resets, pauses, resumes, watches
and reports on it, and hot-plugs disks and NICs into it and out of it.
Verbs take and return a :class:`GuestHandle` or frozen dataclasses of
:mod:`overcast.hypervisor.spec`. Each guest is a daemonized
QEMU, not our child: it outlives overcast. Every step has a timeout.

Errors (all kinds of ``overcast.model.errors``)::

    OvercastError
     ├─ UsageError        the spec cannot run on this machine (argv), before any side effect
     ├─ MissingError      adopt: no QEMU runs in that run directory any more
     ├─ BusyError         start: a different guest already runs in that run directory;
     │                    hot-plug: no hot-plug on that bus, no free port, the address
     │                    is taken, or the guest did not let go of a device in time
     ├─ SystemFault       a verb on a handle that was closed (a bug of the caller)
     └─ FailedError       QEMU refused: it would not start (its own message, e.g.
         │                'Failed to get "write" lock'), a command got an error reply
         │                (qemu.qmp ExecuteError) or a device is not as asked. QEMU is
         │                as it was; a failed start leaves no process and no file.
         └─ GuestLostError  we lost QEMU: the connection broke or a call timed out
                          (ConnectError, ExecInterruptedError, EOF, timeout). The guest
                          has probably ended: wait_exit() tells, and cleans up.

Hot-plug (:meth:`QemuDriver.plug_disk` and friends) uses ``blockdev-add``
and ``netdev_add`` for the host side, ``device_add`` for the guest's, and
on removal waits for QEMU's ``DEVICE_DELETED`` (subscribed to before
``device_del`` is sent) before closing the image or the tap. A SCSI disk
goes at once; a PCI device (virtio disk, NIC) goes only when the guest OS
releases it, so a guest with no OS (or none that handles PCIe hot-plug)
keeps it: after ``unplug_timeout`` the verb gives up with a
:class:`BusyError`; QEMU's request stays pending and asking again sends it again.
The caller runs one hot-plug verb per guest at a time.

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
from collections.abc import Awaitable, Callable
from pathlib import Path

from qemu.qmp import EventListener, ExecuteError

from overcast.hypervisor.argv import (
    QEMU,
    SCSI_CONTROLLER,
    RunFiles,
    disk_blockdev,
    disk_device,
    disk_driver,
    disk_id,
    disk_ids,
    hotplug_ports,
    netdev_id,
    nic_device,
    nic_driver,
    nic_id,
    nic_netdev,
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
    DiskSpec,
    DiskStats,
    GuestExit,
    GuestInfo,
    GuestSpec,
    NicSpec,
    NicStats,
)
from overcast.model.errors import BusyError, FailedError, MissingError, OvercastError

__all__ = ["GuestHandle", "GuestLostError", "QemuDriver"]

log = logging.getLogger(__name__)

_PERIPHERAL = "/machine/peripheral/"


class QemuDriver:
    """Verbs on QEMU guests. ``accel`` comes from :func:`overcast.hypervisor.kvm.choose_accel`.

    ``timeout`` bounds every step: QEMU's start-up, each QMP call, a kill.
    ``unplug_timeout`` is how long a hot-unplug waits for the guest to let
    go of a PCI device.
    """

    #: Declared, not guessed: what the layers above may ask of this driver.
    CAN_MIGRATE = False
    CAN_ADOPT = True

    #: Buses whose disks can be added to and removed from a running guest.
    HOTPLUG_BUSES = frozenset({"scsi", "virtio"})

    def __init__(
        self,
        accel: Accel,
        *,
        timeout: float = 10.0,
        qemu: str = QEMU,
        unplug_timeout: float = 10.0,
    ) -> None:
        self.accel: Accel = accel
        self.timeout = timeout
        self.qemu = qemu
        self.unplug_timeout = unplug_timeout

    def argv(self, spec: GuestSpec, rundir: Path) -> list[str]:
        """The exact command line :meth:`start` runs (pure; for logs and benchmarks)."""
        args = qemu_argv(spec, RunFiles.at(rundir).rundir, self.accel)
        args[0] = self.qemu
        return args

    async def start(
        self,
        spec: GuestSpec,
        rundir: Path,
        *,
        before_run: Callable[[int], Awaitable[object]] | None = None,
    ) -> GuestHandle:
        """Start ``spec`` paused, confirm its devices over QMP, run it; return when running.

        ``before_run(pid)`` is what the caller must do to the process before
        the guest runs (its cpu cgroup): it runs alongside the QMP
        confirmation, not after it, and ``cont`` waits for it. (Moving a
        process between cgroup v1 groups waits out an RCU grace period,
        about 10 ms here: hidden this way.)

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
        preparing: asyncio.Task[object] | None = None
        try:
            await spawn(argv, files, self.timeout)
            found = find_qemu(files)
            if found is None:
                raise FailedError(f"QEMU ended as it started; see {files.log}")
            if before_run is not None:
                preparing = asyncio.ensure_future(before_run(found[0]))
            guest = await GuestHandle.connect(files, *found, label=spec.uuid, limit=self.timeout)
            await self._confirm(guest, spec)
            if spec.vnc is not None and spec.vnc.password is not None:
                await guest.qmp("change-vnc-password", {"password": spec.vnc.password})
            if preparing is not None:
                await preparing
            await guest.qmp("cont")
            status = await _status(guest)
            if status != "running":
                raise FailedError(f"QEMU is {status!r}, not running, after cont")
        except BaseException:
            if preparing is not None:
                preparing.cancel()
                await asyncio.gather(preparing, return_exceptions=True)
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

    # -- hot-plug ------------------------------------------------------------------------

    async def plug_disk(self, guest: GuestHandle, disk: DiskSpec) -> None:
        """Add ``disk`` to the running guest; return once QEMU has it as asked.

        A ``scsi`` disk goes onto the SCSI controller, a ``virtio`` one into
        a free hot-plug port. Idempotent: the same disk there already is
        verified, not added twice; another device on its address is a
        :class:`BusyError`. On failure QEMU is as it was.
        """
        self._check_hotplug(disk.name, disk.bus)
        device_id, node = disk_ids(disk.name)
        present = await _peripherals(guest)
        if device_id in present:
            await self._already(guest, disk.name, (disk,), ())
            return
        port = None
        if disk.bus == "virtio":
            port = await _free_port(guest)
        elif SCSI_CONTROLLER not in present:
            raise BusyError("this guest has no SCSI controller; stop and start it to get one")
        device = disk_device(disk, port=port)  # UsageError before any side effect
        await guest.qmp("blockdev-add", disk_blockdev(disk))
        added = False
        try:
            await guest.qmp("device_add", device)
            added = True
            await self._confirm_devices(guest, (disk,), ())
        except BaseException:
            with contextlib.suppress(OvercastError):
                if added:
                    await self._delete_device(guest, device_id)
                await guest.qmp("blockdev-del", {"node-name": node})
            raise
        guest.log.info("hot-plugged %s (%s)%s", disk.name, disk.image, f" on {port}" * bool(port))

    async def unplug_disk(self, guest: GuestHandle, name: str) -> None:
        """Remove the disk on the API's device ``name`` and close its image.

        Returns once QEMU has deleted the device (``DEVICE_DELETED``). A disk
        that is not there is no change, so it may be asked again after a
        :class:`BusyError` (the guest kept it).
        """
        bus = name.split(":")[0]
        self._check_hotplug(name, "virtio" if bus == "block" else bus)
        device_id, node = disk_ids(name)
        await self._delete_device(guest, device_id)
        nodes = await guest.qmp("query-named-block-nodes", {"flat": True})
        if node in {str(as_dict(n).get("node-name")) for n in as_list(nodes)}:
            await guest.qmp("blockdev-del", {"node-name": node})
        guest.log.info("hot-unplugged %s", name)

    async def plug_nic(self, guest: GuestHandle, nic: NicSpec) -> None:
        """Add ``nic`` (its tap, which must exist, and its card in a free
        hot-plug port) to the running guest; return once QEMU has it as
        asked. Idempotent like :meth:`plug_disk`."""
        device_id = nic_id(nic.slot)
        if device_id in await _peripherals(guest):
            await self._already(guest, f"nic:{nic.slot}", (), (nic,))
            return
        port = await _free_port(guest)
        device = nic_device(nic, port=port)
        netdev = nic_netdev(nic) if nic.tap is not None else None
        if netdev is not None:
            await guest.qmp("netdev_add", netdev)
        added = False
        try:
            await guest.qmp("device_add", device)
            added = True
            await self._confirm_devices(guest, (), (nic,))
        except BaseException:
            with contextlib.suppress(OvercastError):
                if added:
                    await self._delete_device(guest, device_id)
                if netdev is not None:
                    await guest.qmp("netdev_del", {"id": netdev["id"]})
            raise
        if nic.tap is not None:
            guest.taps = {**guest.taps, device_id: nic.tap}
        guest.log.info("hot-plugged nic:%d (%s) on %s", nic.slot, nic.mac, port)

    async def unplug_nic(self, guest: GuestHandle, index: int) -> None:
        """Remove the API's ``nic:index`` and its tap's netdev (the tap itself
        is the caller's). Returns once QEMU has deleted the card; a NIC that
        is not there is no change."""
        device_id = nic_id(index)
        await self._delete_device(guest, device_id)
        if device_id in guest.taps:
            try:
                await guest.qmp("netdev_del", {"id": netdev_id(index)})
            except FailedError as err:
                if not _not_found(err):
                    raise
            guest.taps = {d: tap for d, tap in guest.taps.items() if d != device_id}
        guest.log.info("hot-unplugged nic:%d", index)

    def remember_taps(self, guest: GuestHandle, taps: dict[str, str]) -> None:
        """Tell an adopted guest's handle the taps of NICs that were
        hot-plugged (its command line names only the others)."""
        guest.taps = {**taps, **guest.taps}

    def _check_hotplug(self, name: str, bus: str) -> None:
        if bus not in self.HOTPLUG_BUSES:
            raise BusyError(
                f"{name}: IDE (AHCI) disks cannot be added or removed while the guest "
                "runs; stop the server first, or use a scsi:0:U or block:N device"
            )

    async def _already(
        self, guest: GuestHandle, name: str, disks: tuple[DiskSpec, ...], nics: tuple[NicSpec, ...]
    ) -> None:
        """A device is on ``name``'s address already: fine if it is the one asked for."""
        try:
            await self._confirm_devices(guest, disks, nics)
        except FailedError as err:
            raise BusyError(f"{name} is in use in the guest: {err.message}") from err

    async def _delete_device(self, guest: GuestHandle, device_id: str) -> None:
        """``device_del`` and wait for its ``DEVICE_DELETED``; no such device is no change."""

        def this_device(event: object) -> bool:
            return as_dict(as_dict(event).get("data")).get("device") == device_id

        deleted = EventListener("DEVICE_DELETED", event_filter=this_device)
        # guest.py offers no public way to listen for events yet; its QMP
        # client is the one connection QEMU serves, so listen on it.
        with guest._client.listen(deleted):
            try:
                await guest.qmp("device_del", {"id": device_id})
            except FailedError as err:
                if _not_found(err):
                    return
                raise
            event = asyncio.ensure_future(deleted.get())
            gone = asyncio.ensure_future(guest.wait_gone())
            try:
                done, _ = await asyncio.wait(
                    {event, gone}, timeout=self.unplug_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                event.cancel()
                gone.cancel()
        if event in done:
            return
        if gone in done:
            raise GuestLostError(f"QEMU of guest {guest.uuid} ended while removing {device_id}")
        raise BusyError(
            f"the guest did not let go of {device_id} within {self.unplug_timeout:g} s "
            "(PCI hot-unplug needs the guest OS's cooperation); it stays attached "
            "until it does: ask again, or stop the server"
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
        await self._confirm_devices(guest, spec.disks, spec.nics)

    async def _confirm_devices(
        self, guest: GuestHandle, disks: tuple[DiskSpec, ...], nics: tuple[NicSpec, ...]
    ) -> None:
        """Check that QEMU has these disks and NICs, as asked (:class:`FailedError` if not)."""
        blocks = {_qdev(b): b for b in map(as_dict, as_list(await guest.qmp("query-block")))}
        disk_paths = [_PERIPHERAL + disk_id(d) for d in disks]
        nic_paths = [_PERIPHERAL + nic_id(n.slot) for n in nics]
        kinds = await asyncio.gather(*(_qom(guest, p, "type") for p in disk_paths + nic_paths))
        macs = await asyncio.gather(*(_qom(guest, p, "mac") for p in nic_paths))
        for disk, kind in zip(disks, kinds, strict=False):
            medium = blocks.get(disk_id(disk), {}).get("inserted")
            if kind != disk_driver(disk) or not isinstance(medium, dict):
                raise FailedError(f"QEMU has no {disk_driver(disk)} {disk.name} with a medium")
            if medium.get("file") != str(disk.image) or medium.get("ro") != disk.readonly:
                raise FailedError(f"QEMU attached {disk.name} with another image or mode")
        nic_kinds = kinds[len(disks) :]
        for nic, kind, mac in zip(nics, nic_kinds, macs, strict=True):
            if kind != nic_driver(nic.model) or mac != nic.mac:
                raise FailedError(
                    f"QEMU has no {nic_driver(nic.model)} nic:{nic.slot} MAC {nic.mac}"
                )

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


async def _peripherals(guest: GuestHandle) -> set[str]:
    """The ids of the devices QEMU has that were given one (ours all are)."""
    found = await guest.qmp("qom-list", {"path": _PERIPHERAL})
    return {str(as_dict(p).get("name")) for p in as_list(found)}


async def _free_port(guest: GuestHandle) -> str:
    """A hot-plug port with no device on its bus (:class:`BusyError` if none)."""
    ports = hotplug_ports()
    try:
        buses = await asyncio.gather(
            *(guest.qmp("qom-list", {"path": f"{_PERIPHERAL}{p}/{p}"}) for p in ports)
        )
    except FailedError as err:
        if not _not_found(err):
            raise
        raise BusyError(
            "this guest was started without hot-plug ports; stop and start it to get them"
        ) from err
    for port, bus in zip(ports, buses, strict=True):
        # A device on the bus is a ``child[N]`` link of it.
        if not any(str(as_dict(c).get("name")).startswith("child[") for c in as_list(bus)):
            return port
    raise BusyError(
        f"all {len(ports)} hot-plug ports of this guest are in use; stop and start it "
        "(its devices then sit on the root bus) to add more"
    )


def _not_found(err: FailedError) -> bool:
    """Whether QEMU refused a command because the device or netdev does not exist."""
    cause = err.__cause__
    return isinstance(cause, ExecuteError) and cause.error_class == "DeviceNotFound"


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
