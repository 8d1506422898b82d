"""Servers as users see them: the synchronous create path and every verb.

Create follows DESIGN.md step by step: parse every key (``400``); then in
ONE store transaction check ownership of each drive, IP and VLAN, take the
drive claims under the drives' row locks, check quota and the host's room,
and insert the server as ``starting``; only then ask the host to start the
guest (paused, every device confirmed, then running); then mark it
``active``. A failure after the transaction deletes the row again, which
releases its claims and NICs (they cascade), so a failed create leaves
nothing behind.

Guest ends come back from the host through :meth:`ServerService.host_exited`
(in-process from this machine's agent, or a remote host's callback: see
:mod:`overcast.cluster.exits`): a non-persistent server is deleted, a persistent
one becomes ``stopped`` and lets go of its drives.

A running server can be suspended (QEMU ``stop``: status ``paused``, still
billed, devices and claims kept) and resumed. A paused guest cannot see its
power button, so ``shutdown`` refuses it, and so does ``reset`` (QEMU would
leave it in its pre-start state); ``stop`` and ``destroy`` work.

Drives (``scsi`` and ``block``; IDE has no hot-plug) and NICs are
attached to a running server and detached from it live: the checks and
the claim are those of create, taken in the transaction that changes the
configuration; then the host hot-plugs the device; a failure there undoes
both. Detaching removes the device from the guest first and only then
lets go of the claim. On a stopped server both are configuration changes.
These verbs, ``set`` and suspend/resume run one at a time per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid as _uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from overcast.cluster.exits import FENCED, ExitReport
from overcast.cluster.fleet import Fleet
from overcast.host.agent import UNOBSERVED
from overcast.host.client import HostClient
from overcast.host.pool import Pool
from overcast.hypervisor import spec as hv
from overcast.hypervisor.spec import DiskSpec, GuestSpec, NicSpec, VncSpec
from overcast.model.codec import Keys, Record
from overcast.model.drive import ClaimType, LibraryFormat, Media
from overcast.model.errors import (
    BusyError,
    FailedError,
    FullError,
    HostUnreachable,
    MissingError,
    OvercastError,
    UsageError,
)
from overcast.model.host import LOCAL
from overcast.model.keys import parse_uuid
from overcast.model.server import (
    READ_ONLY,
    Bus,
    DeviceSpec,
    Nic,
    NicModel,
    Server,
    ServerSpec,
    ServerStatus,
    new_mac,
    parse_device_name,
    parse_server_spec,
    server_info,
)
from overcast.model.user import User
from overcast.store import Store
from overcast.store import drives as drive_rows
from overcast.store import events as event_rows
from overcast.store import resources as resource_rows
from overcast.store import servers as rows
from overcast.store import usage as usage_rows
from overcast.store import users as user_rows
from overcast.store.engine import Tx

__all__ = ["CallbackCheck", "Capacity", "EventSink", "ServerService"]

GuestVerb = Callable[[HostClient, str], Awaitable[None]]
#: Told that server S was fenced on host H at T (the failover revives it).
FenceSink = Callable[[str, str, float], Awaitable[None]]

log = logging.getLogger(__name__)

#: The one host of the all-in-one cloud.
#: How long info waits for a host's live counters (a hung host must not
#: hang the owner's info).
INFO_TIMEOUT = 2.0
#: How many unreachable hosts a create tries past before it gives up.
PLACEMENT_TRIES = 2
#: Keys that may change while a server runs (API.md, ``/servers/S/set``).
_SHOWN_ONLY = re.compile(
    r".+:(read|write):(bytes|requests)|rx:packets|tx:packets|nic:[0-9]:dhcp:ip|vnc:port"
)
_LIVE_KEYS = frozenset(
    {"name", "cpu", "tags", "persistent", "vnc:password", "password", "callback:exit"}
)
_BUS: dict[Bus, hv.Bus] = {Bus.IDE: "ide", Bus.SCSI: "scsi", Bus.VIRTIO: "virtio"}
_MEDIA: dict[Media, hv.Media] = {Media.DISK: "disk", Media.CDROM: "cdrom"}
_MODEL: dict[NicModel, hv.NicModel] = {
    NicModel.E1000: "e1000",
    NicModel.RTL8139: "rtl8139",
    NicModel.VIRTIO: "virtio",
}


@dataclass(frozen=True)
class Capacity:
    """What a host offers guests."""

    cpu: int  # MHz
    mem: int  # MiB


def _config(keys: Keys) -> dict[str, str]:
    """The keys that describe the server: what info showed back is dropped."""
    return {k: v for k, v in keys.items() if k not in READ_ONLY and not _SHOWN_ONLY.fullmatch(k)}


#: Checks a callback URL the user gave (raises :class:`UsageError`).
CallbackCheck = Callable[[User, str], Awaitable[None]]
#: Told after an event was committed (to wake delivery and the feed).
EventSink = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


async def _any_url(_user: User, _url: str) -> None:
    return None


class ServerService:
    def __init__(
        self,
        store: Store,
        pool: Pool,
        fleet: Fleet,
        *,
        check_callback: CallbackCheck = _any_url,
        on_event: EventSink = _nothing,
    ) -> None:
        self.store = store
        self.pool = pool
        self.fleet = fleet
        self.check_callback = check_callback
        self.on_event = on_event
        #: With failover on: a fenced guest is revived, not ended.
        self.on_fenced: FenceSink | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- reads -------------------------------------------------------------

    async def owned(self, user: User, uuid: str) -> Server:
        async with self.store.read() as tx:
            server = await rows.get_server(tx, parse_uuid("server", uuid))
        if server is None or server.user != user.uuid:
            raise MissingError(f"no server {uuid}")
        return server

    async def of_user(self, user: User) -> list[Server]:
        async with self.store.read() as tx:
            servers = await rows.list_servers(tx, user.uuid)
        # A create under way is not yet a server the user has.
        return [s for s in servers if s.status is not ServerStatus.STARTING]

    async def info(self, server: Server) -> Record:
        """Info with the guest's I/O counters while it runs."""
        record = dict(server_info(server))
        if server.status in (ServerStatus.ACTIVE, ServerStatus.PAUSED):
            try:
                async with asyncio.timeout(INFO_TIMEOUT):
                    running = await (await self.fleet.client(server.host)).info(server.uuid)
            except (OvercastError, TimeoutError):  # the record, without live counters
                return record
            rx = tx = rxp = txp = 0
            for nic in running.info.nics:
                rx += nic.rx_bytes or 0
                tx += nic.tx_bytes or 0
                rxp += nic.rx_packets or 0
                txp += nic.tx_packets or 0
            record.update({"rx": rx, "tx": tx, "rx:packets": rxp, "tx:packets": txp})
            names = {_disk_device_id(d.name): d.name for d in server.spec.devices}
            for disk in running.info.disks:
                if (name := names.get(disk.device)) is not None:
                    record[f"{name}:read:bytes"] = disk.read_bytes
                    record[f"{name}:read:requests"] = disk.read_requests
                    record[f"{name}:write:bytes"] = disk.write_bytes
                    record[f"{name}:write:requests"] = disk.write_requests
        return record

    # -- create ------------------------------------------------------------

    async def create(
        self, user: User, keys: Keys, *, stopped: bool = False, uuid: str | None = None
    ) -> Server:
        """``uuid``: the id to give the server (a manager creating, on a host,
        the server it already numbered); :class:`BusyError` if taken.

        An administrator's create with a given id is a manager's create on
        its host (*trusted*): drives it names may exist only as images in
        the shared pool and VLANs and addresses only in the manager's store,
        whose claims and checks were made there; ``shared`` says which
        drives to open shareable."""
        spec = parse_server_spec(keys)
        trusted = user.admin and uuid is not None
        if spec.callback_exit is not None:
            await self.check_callback(user, spec.callback_exit)
        if spec.host is not None and not user.admin:
            raise UsageError("host: only administrators may pin a server to a host")
        if spec.shared and not trusted:
            raise UsageError("shared: only a manager creating on its host may name shared drives")
        uuid = str(_uuid.uuid4()) if uuid is None else parse_uuid("server", uuid)
        unreachable: set[str] = set()
        while True:
            server, claims = await self._insert(
                user, spec, uuid, _config(keys), stopped, trusted, unreachable
            )
            if stopped:
                return await self._reread(uuid)
            try:
                return await self._run(server, claims)
            except HostUnreachable as err:
                # Nothing reached the host: the create may go elsewhere.
                if spec.host is not None or len(unreachable) >= PLACEMENT_TRIES:
                    raise
                log.warning("create of %s: %s; placing it again", uuid, err.message)
                unreachable.add(server.host)

    async def _insert(
        self,
        user: User,
        spec: ServerSpec,
        uuid: str,
        config: dict[str, str],
        stopped: bool,
        trusted: bool,
        exclude: set[str],
    ) -> tuple[Server, list[rows.Claim]]:
        """Check and claim everything, place the guest and write its row."""
        status = ServerStatus.STOPPED if stopped else ServerStatus.STARTING
        async with self.store.write() as tx:
            if await rows.get_server(tx, uuid, lock=True) is not None:
                raise BusyError(f"server {uuid} exists already")
            claims, untracked = await self._claims(tx, user, spec, trusted=trusted)
            nics = await self._nics(tx, user, spec, trusted=trusted)
            host = LOCAL
            if not stopped:
                await self._check_room(tx, user, spec)
                host = await self.fleet.place(tx, spec, exclude)
            server = Server(uuid, user.uuid, config, status, host, nics)
            await rows.insert_server(
                tx, server, () if stopped else [c for c in claims if c.drive not in untracked]
            )
        return server, claims

    async def _claims(
        self, tx: Tx, user: User, spec: ServerSpec, *, trusted: bool = False
    ) -> tuple[list[rows.Claim], set[str]]:
        """Check every drive and the claims on it; the drives stay locked.
        Also the drives a trusted create names that this store does not
        know (their claims are the manager's: none is recorded here)."""
        claims, untracked = [], set()
        for device in spec.devices:
            if trusted and await drive_rows.get_drive(tx, device.drive) is None:
                if not self.pool.path(device.drive).is_file():
                    raise MissingError(f"{device.name}: no drive {device.drive} in the pool")
                exclusive = device.drive not in spec.shared
                claims.append(rows.Claim(device.drive, device.name, exclusive))
                untracked.add(device.drive)
            else:
                claims.append(await self._claim(tx, user, device))
        return claims, untracked

    async def _claim(self, tx: Tx, user: User, device: DeviceSpec) -> rows.Claim:
        """Check one drive and the claims on it (the drive stays locked)."""
        drive = await drive_rows.get_drive(tx, device.drive, lock=True)
        if drive is None or not (
            drive.user == user.uuid
            or (drive.readable_by(user.uuid) and drive.claim_type is ClaimType.SHARED)
        ):
            raise MissingError(f"{device.name}: no drive {device.drive}")
        if drive.format is LibraryFormat.GZIP:
            raise UsageError(
                f"{device.name}: library drive {drive.uuid} is compressed; "
                "image it onto a drive of yours"
            )
        if drive.imaging is not None:
            raise BusyError(f"{device.name}: drive {drive.uuid} is being imaged")
        exclusive = drive.claim_type is ClaimType.EXCLUSIVE
        for held in await rows.drive_claims(tx, drive.uuid):
            if exclusive or held.exclusive:
                raise BusyError(
                    f"{device.name}: drive {drive.uuid} is claimed by server {held.server}"
                )
        return rows.Claim(drive.uuid, device.name, exclusive)

    async def _nics(
        self,
        tx: Tx,
        user: User,
        spec: ServerSpec,
        keep: tuple[Nic, ...] = (),
        *,
        trusted: bool = False,
    ) -> tuple[Nic, ...]:
        """Realise the NICs: check VLANs, MACs and addresses; a NIC without a
        MAC gets a new one, or keeps its MAC from ``keep`` (same slot and
        network), so a ``set`` on a stopped server does not change MACs."""
        kept = {(n.index, n.vlan): n.mac for n in keep}
        nics = []
        for nic in spec.nics:
            if trusted and nic.mac is not None:  # the manager's NIC, checked there
                ip = nic.dhcp if nic.dhcp != "auto" else None
                nics.append(Nic(nic.index, nic.model, nic.mac, nic.vlan, ip))
                continue
            if nic.vlan is not None:
                vlan = await resource_rows.get_vlan(tx, nic.vlan)
                if vlan is None or vlan.user != user.uuid:
                    raise MissingError(f"nic:{nic.index}:vlan: no vlan {nic.vlan}")
            mac = nic.mac or kept.get((nic.index, nic.vlan))
            if mac is None:
                # 24 random bits: a clash is rare, but draw again if it happens.
                mac = new_mac()
                while await rows.mac_in_use(tx, nic.vlan, mac):
                    mac = new_mac()
            elif nic.mac is not None and (other := await rows.mac_in_use(tx, nic.vlan, mac)):
                raise BusyError(f"nic:{nic.index}:mac: {mac} is in use by server {other}")
            ip = await self._address(tx, user, nic.index, nic.dhcp) if nic.dhcp else None
            nics.append(Nic(nic.index, nic.model, mac, nic.vlan, ip))
        return tuple(nics)

    async def _address(self, tx: Tx, user: User, index: int, dhcp: str) -> str:
        """The public address for ``nic:N:dhcp``: one of the user's, or for
        ``auto`` the first of theirs that is free."""
        if dhcp != "auto":
            ip = await resource_rows.get_ip(tx, dhcp)
            if ip is None or ip.user != user.uuid:
                raise MissingError(f"nic:{index}:dhcp: no ip {dhcp}")
            if other := await rows.ip_in_use(tx, dhcp):
                raise BusyError(f"nic:{index}:dhcp: {dhcp} is in use by server {other}")
            return dhcp
        for ip in await resource_rows.list_ips(tx, user.uuid):
            if await rows.ip_in_use(tx, ip.address) is None:
                return ip.address
        raise FullError(
            f"nic:{index}:dhcp auto: none of your IP addresses is free; "
            "create one with /resources/ip/create"
        )

    async def _check_room(self, tx: Tx, user: User, spec: ServerSpec) -> None:
        locked = await user_rows.get_user(tx, user.uuid, lock=True)
        quota = (locked or user).quota
        count, cpu, mem = await rows.usage(tx, user.uuid)
        quota.check("servers", count, 1)
        quota.check("cpu", cpu, spec.cpu)
        quota.check("mem", mem, spec.mem)

    async def _run(
        self, server: Server, claims: list[rows.Claim], *, restart: bool = False
    ) -> Server:
        """Start a ``starting`` server's guest; on failure undo the create
        (or, for a ``restart`` of a stopped server, let it be stopped again).

        ``claims`` are the ones just taken: a shared drive must be opened
        shareable, or QEMU's image lock refuses its second writer."""
        shared = {c.drive for c in claims if not c.exclusive}
        try:
            guest = self._guest(server, shared)
            client = await self.fleet.client(server.host)
            running = await client.start(guest, [n.vlan for n in server.nics])
        except BaseException:
            async with self.store.write() as tx:
                if restart:  # the server existed before: it stays, stopped
                    await rows.release_claims(tx, server.uuid)
                    await rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
                else:
                    await rows.delete_server(tx, server.uuid)
            raise
        async with self.store.write() as tx:
            current = await rows.get_server(tx, server.uuid, lock=True)
            if current is not None and current.status is ServerStatus.STARTING:
                await rows.set_status(tx, server.uuid, ServerStatus.ACTIVE, started=time.time())
                vnc = running.vnc
                await rows.set_vnc(
                    tx, server.uuid, vnc.ip if vnc else None, vnc.port if vnc else None
                )
                return await rows.get_server(tx, server.uuid) or current
        # Not starting any more: the guest ended at once (its end was
        # processed) or a destroy deleted the row meanwhile. A guest left
        # running for a deleted row would run for nobody: end it.
        if current is None:
            with contextlib.suppress(OvercastError):
                await client.stop(server.uuid)
            raise FailedError(f"server {server.uuid} ended while it was being started")
        return current

    def _guest(self, server: Server, shared: set[str]) -> GuestSpec:
        spec = server.spec
        boot = {name: i for i, name in enumerate(spec.boot)}
        if not boot and spec.devices:
            boot = {spec.devices[0].name: 0}
        disks = [
            self._disk(device, boot.get(device.name), device.drive in shared)
            for device in spec.devices
        ]
        nics = tuple(_nic_spec(n) for n in server.nics)
        vnc = VncSpec("127.0.0.1", 0, spec.vnc_password) if spec.vnc_password else None
        return GuestSpec(
            uuid=server.uuid,
            name=spec.name,
            smp=spec.smp,
            mem_mib=spec.mem,
            cpu_mhz=spec.cpu,
            disks=tuple(disks),
            nics=nics,
            vnc=vnc,
        )

    def _disk(self, device: DeviceSpec, bootindex: int | None, shared: bool) -> DiskSpec:
        bus_no, unit = (
            (0, device.index) if device.bus is Bus.VIRTIO else (device.index, device.unit)
        )
        return DiskSpec(
            image=self.pool.path(device.drive),
            bus=_BUS[device.bus],
            bus_no=bus_no,
            unit=unit,
            media=_MEDIA[device.media],
            bootindex=bootindex,
            shared=shared,
        )

    async def _reread(self, uuid: str) -> Server:
        async with self.store.read() as tx:
            server = await rows.get_server(tx, uuid)
        if server is None:
            raise MissingError(f"no server {uuid}")
        return server

    # -- verbs ---------------------------------------------------------------

    async def start(self, user: User, uuid: str) -> Server:
        """Start a stopped (persistent or created-stopped) server again."""
        server = await self.owned(user, uuid)
        if server.status is not ServerStatus.STOPPED:
            raise BusyError(f"server {uuid} is {server.status.value}, not stopped")
        async with self.store.write() as tx:
            current = await rows.get_server(tx, server.uuid, lock=True)
            if current is None or current.status is not ServerStatus.STOPPED:
                raise BusyError(f"server {uuid} is not stopped")
            # The configuration as it is now (a drive may have been attached
            # since it was read above).
            claims, _ = await self._claims(tx, user, current.spec)
            await rows.take_claims(tx, server.uuid, claims)
            await self._check_room(tx, user, current.spec)
            await rows.set_host(tx, server.uuid, await self.fleet.place(tx, current.spec))
            # ``started`` set on a starting row marks a restart, not a create:
            # after a crash the reconciler stops it again instead of deleting it.
            await rows.set_status(tx, server.uuid, ServerStatus.STARTING, started=time.time())
        return await self._run(await self._reread(server.uuid), claims, restart=True)

    async def _running(self, user: User, uuid: str) -> Server:
        server = await self.owned(user, uuid)
        if server.status not in (ServerStatus.ACTIVE, ServerStatus.PAUSED):
            raise BusyError(f"server {uuid} is not running")
        return server

    async def _on_guest(self, user: User, uuid: str, verb: GuestVerb) -> None:
        server = await self._running(user, uuid)
        try:
            await verb(await self.fleet.client(server.host), server.uuid)
        except MissingError:
            # The store still says active but the guest has just ended: its
            # end is being processed. Not running is the caller's answer.
            raise BusyError(f"server {uuid} is not running") from None

    async def shutdown(self, user: User, uuid: str) -> None:
        """Press the power button; the guest decides (it may not obey).

        A paused guest is refused rather than resumed behind the owner's
        back: it could not see the press until resumed.
        """
        if (await self.owned(user, uuid)).status is ServerStatus.PAUSED:
            raise BusyError(
                f"server {uuid} is paused and cannot see its power button: "
                "resume it first, or stop it"
            )
        await self._on_guest(user, uuid, _verb("powerdown"))

    async def stop(self, user: User, uuid: str) -> None:
        """Power off now; returns once the end has been processed."""
        await self._on_guest(user, uuid, _verb("stop"))

    async def reset(self, user: User, uuid: str) -> None:
        """Hard reset. Not while paused: QEMU would leave the guest in its
        pre-start state until resumed; resume it first, or stop it."""
        if (await self.owned(user, uuid)).status is ServerStatus.PAUSED:
            raise BusyError(f"server {uuid} is paused: resume it first, or stop it")
        await self._on_guest(user, uuid, _verb("reset"))

    async def destroy(self, user: User, uuid: str) -> None:
        server = await self.owned(user, uuid)
        if server.status is not ServerStatus.STOPPED:
            client = await self.fleet.client(server.host)
            if server.uuid in await client.running():
                await client.stop(server.uuid)
        async with self.store.write() as tx:
            await rows.delete_server(tx, server.uuid)

    async def set(self, user: User, uuid: str, keys: Keys) -> Server:
        """Change keys; while the guest runs, only the live ones.

        A key given with the value info shows for it is no change: clients
        send a whole info record back with one key edited (``smp``, a
        generated ``nic:0:mac`` or the running ``vnc:ip`` are then not
        changes that a running server refuses).
        """
        async with self._exclusive(parse_uuid("server", uuid)):
            return await self._set(user, uuid, keys)

    async def _set(self, user: User, uuid: str, keys: Keys) -> Server:
        server = await self.owned(user, uuid)
        shown = {k: str(v) for k, v in server_info(server).items()}
        changes = {
            k: v
            for k, v in _config(keys).items()
            if server.config.get(k) != v and shown.get(k) != v.strip()
        }
        running = server.status is not ServerStatus.STOPPED
        if running:
            for key in changes:
                if key not in _LIVE_KEYS and not key.startswith("user:"):
                    raise BusyError(f"{key} cannot change while server {uuid} runs")
        config = {**server.config, **changes}
        spec = parse_server_spec(config)  # the whole result must still be valid
        if spec.callback_exit is not None and spec.callback_exit != server.spec.callback_exit:
            await self.check_callback(user, spec.callback_exit)
        if running and spec.smp != server.spec.smp:
            raise BusyError(
                f"cpu {spec.cpu} would make smp {spec.smp} while server {uuid} runs with "
                f"smp {server.spec.smp}; give smp {server.spec.smp} too, or stop it first"
            )
        async with self.store.write() as tx:
            current = await rows.get_server(tx, server.uuid, lock=True)
            if current is None:
                raise MissingError(f"no server {uuid}")
            if current.status is not server.status or current.config != server.config:
                raise BusyError(f"server {uuid} changed meanwhile; try again")
            if running and (spec.cpu, spec.mem) != (server.spec.cpu, server.spec.mem):
                # The ledger's record at the old size ends with the change.
                await usage_rows.bill_server(tx, server.uuid, time.time(), "change")
            if running or spec.nics == server.spec.nics:
                await rows.update_config(tx, server.uuid, config)
            else:
                # A stopped server's NICs changed: realise them again (MACs
                # kept where the NIC stays), which the store does by writing
                # the server anew; a stopped server holds no claims to lose.
                await rows.delete_server(tx, server.uuid)
                nics = await self._nics(tx, user, spec, keep=server.nics)
                await rows.insert_server(
                    tx, dataclasses.replace(server, config=config, nics=nics, started=None)
                )
        if running and (
            spec.cpu != server.spec.cpu or spec.vnc_password != server.spec.vnc_password
        ):
            await (await self.fleet.client(server.host)).update(
                server.uuid,
                cpu_mhz=spec.cpu if spec.cpu != server.spec.cpu else None,
                vnc_password=spec.vnc_password
                if spec.vnc_password != server.spec.vnc_password
                else None,
            )
        return await self._reread(server.uuid)

    # -- from the host -------------------------------------------------------

    async def host_exited(self, report: ExitReport) -> None:
        """A guest ended (any reason): delete or stop its server, and append
        its ``server.exit`` event and the run's last usage record in the same
        transaction, so that the change, its event and its bill are
        committed together or not at all. Idempotent: a server already gone
        or stopped has had its event."""
        async with self.store.write() as tx:
            server = await rows.get_server(tx, report.server, lock=True)
            if server is None or server.status is ServerStatus.STOPPED:
                if server is None:
                    log.info("exit of server %s: no such server (done before)", report.server)
                return
            if report.host is not None and report.host != server.host:
                log.warning(
                    "exit report %s of server %s by host %s ignored: it runs on %s",
                    report.event,
                    report.server,
                    report.host,
                    server.host,
                )
                return
            if (
                report.started is not None
                and server.started is not None
                # Info shows whole seconds, and two machines clock a start apart.
                and abs(report.started - server.started) >= 2.0
            ):
                log.warning(
                    "exit report %s for an earlier run of server %s ignored",
                    report.event,
                    report.server,
                )
                return
            # This process's own host is not failed over: its fenced guest ends.
            remote = server.host != LOCAL
            revive = self.on_fenced if report.reason == FENCED and remote else None
            if revive is None:
                await self._ended(tx, server, report)
        if revive is not None:
            # Not the guest's end: its host lost the right to run it. The
            # server lives on, revived elsewhere.
            log.warning("server %s was fenced on host %s: reviving it", server.uuid, server.host)
            await revive(server.uuid, server.host, report.at)
            return
        log.info("server %s ended (%s)", report.server, report.reason)
        await self.on_event()

    async def _ended(self, tx: Tx, server: Server, report: ExitReport) -> None:
        """Bill, announce and delete (or stop) the server of an ended run."""
        # An end seen only afterwards is known by a lower bound (the
        # host's last sign of life), which may precede this run's start;
        # the guest ran at least from then.
        at = max(report.at, server.started or report.at)
        await usage_rows.bill_server(tx, server.uuid, at, "exit")
        await event_rows.append_event(
            tx,
            type="server.exit",
            user=server.user,
            server=server.uuid,
            reason=report.reason,
            at=at,
            body=server_info(server),
            callback=server.spec.callback_exit,
        )
        if server.spec.persistent:
            await rows.release_claims(tx, server.uuid)
            await rows.set_vnc(tx, server.uuid, None, None)
            await rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
        else:
            await rows.delete_server(tx, server.uuid)

    async def revive(self, uuid: str, lost: str, to: str, lost_at: float) -> bool:
        """Start server ``uuid``, whose host ``lost`` lost the right to run
        it at ``lost_at``, on host ``to``: the same drives, NICs and MACs (a
        hard reset from the guest's view). The caller holds the guest's etcd
        key for ``to``. False if the server no longer runs on ``lost``.

        The guest starts before the record moves: a revival cut short is
        found again (the record still names ``lost``) and finished, and a
        start that finds the guest already running there counts. The old
        run is billed until ``lost_at``, the new one from its start, and a
        ``server.revive`` event is committed with the move.
        """
        async with self.store.read() as tx:
            server = await rows.get_server(tx, uuid)
            held = await rows.server_claims(tx, uuid) if server is not None else []
        if server is None or server.host != lost or server.status not in _RUN_STATES.values():
            return False
        client = await self.fleet.client(to)
        guest = self._guest(server, {c.drive for c in held if not c.exclusive})
        try:
            running = await client.start(guest, [n.vlan for n in server.nics])
            vnc = running.vnc
        except BusyError:
            if uuid not in await client.running():
                raise
            vnc = (await client.info(uuid)).vnc
        started = time.time()
        async with self.store.write() as tx:
            current = await rows.get_server(tx, uuid, lock=True)
            moved = (
                current is not None
                and current.host == lost
                and current.status in _RUN_STATES.values()
            )
            if current is not None and moved:
                await usage_rows.bill_server(tx, uuid, lost_at, "revive")
                await rows.set_host(tx, uuid, to)
                await rows.set_status(tx, uuid, ServerStatus.ACTIVE, started=started)
                await rows.set_vnc(tx, uuid, vnc.ip if vnc else None, vnc.port if vnc else None)
                revived = await rows.get_server(tx, uuid) or current
                await event_rows.append_event(
                    tx,
                    type="server.revive",
                    user=revived.user,
                    server=uuid,
                    reason="host-lost",
                    at=started,
                    body=server_info(revived),
                    callback=revived.spec.callback_exit,
                )
        if not moved:  # stopped or destroyed meanwhile: the new guest runs for nobody
            with contextlib.suppress(OvercastError):
                await client.stop(uuid)
            return False
        log.warning("server %s revived on host %s (host %s was lost)", uuid, to, lost)
        await self.on_event()
        return True

    async def reconcile(self) -> None:
        """After a restart: servers the store thinks run but the host does
        not were ended meanwhile; a create interrupted before its guest ran
        is rolled back, one whose guest runs is completed; a guest with no
        running server to justify it is stopped (the row is the right to
        run). Only this process's own host: a remote host reconciles itself,
        and reports ends through its outbox."""
        local = self.fleet.local
        if local is None:
            return
        running = await local.running()
        async with self.store.read() as tx:
            servers = await rows.servers_on_host(tx, LOCAL)
        justified = {s.uuid for s in servers if s.status is not ServerStatus.STOPPED}
        for orphan in sorted(running - justified):
            log.warning("guest %s runs without a running server: stopping it", orphan)
            await local.stop(orphan)
        for server in servers:
            if server.status is ServerStatus.STOPPED:
                continue
            if server.uuid in running:
                if server.status is ServerStatus.STARTING:
                    async with self.store.write() as tx:
                        await rows.set_status(tx, server.uuid, ServerStatus.ACTIVE, time.time())
                else:
                    await self._settle(server)
                continue
            if server.status is ServerStatus.STARTING and server.started is not None:
                async with self.store.write() as tx:  # an interrupted start: stopped again
                    await rows.release_claims(tx, server.uuid)
                    await rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
                log.info("rolled back the interrupted start of server %s", server.uuid)
            elif server.status is ServerStatus.STARTING:
                async with self.store.write() as tx:
                    await rows.delete_server(tx, server.uuid)
                log.info("rolled back the interrupted create of server %s", server.uuid)
            else:
                await self.host_exited(ExitReport(server.uuid, UNOBSERVED, time.time()))

    async def _settle(self, server: Server) -> None:
        """Make an adopted guest's record say what its QEMU has: a suspend,
        resume, attach or detach that the crash cut short left them apart.
        QEMU's run state wins; a device the record lists but QEMU lacks is
        dropped with its claim (its attach never finished, or its detach
        did). A guest that cannot be asked is left as it is."""
        try:
            guest = (await (await self.fleet.client(server.host)).info(server.uuid)).info
        except OvercastError as err:
            log.warning("server %s: cannot compare with its guest: %s", server.uuid, err)
            return
        state = _RUN_STATES.get(guest.status)
        disks = {d.device for d in guest.disks}
        lost = [d.name for d in server.spec.devices if _disk_device_id(d.name) not in disks]
        cards = {n.device for n in guest.nics}
        lost_nics = [n.index for n in server.nics if f"nic{n.index}" not in cards]
        if not lost and not lost_nics and state in (None, server.status):
            return
        async with self.store.write() as tx:
            current = await rows.get_server(tx, server.uuid, lock=True)
            if current is None or current.status not in _RUN_STATES.values():
                return
            if state is not None and state is not current.status:
                await rows.set_run_state(tx, server.uuid, state)
            config = dict(current.config)
            for name in lost:
                await rows.release_claim(tx, server.uuid, name)
                config = _without_device(config, name)
            for index in lost_nics:
                await rows.remove_nic(tx, server.uuid, index)
                config = _without_nic(config, index)
            if config != current.config:
                await rows.update_config(tx, server.uuid, config)
        log.warning(
            "server %s settled after restart: guest %s, dropped devices %s, NICs %s",
            server.uuid,
            guest.status,
            lost,
            lost_nics,
        )

    # -- suspend and resume --------------------------------------------------------

    async def suspend(self, user: User, uuid: str) -> Server:
        """Pause a running guest (QEMU ``stop``); its info says ``status paused``.

        It keeps its host, devices and claims and is billed as running.
        :class:`BusyError` unless the server is active.
        """
        return await self._switch(user, uuid, ServerStatus.PAUSED, _verb("pause"))

    async def resume(self, user: User, uuid: str) -> Server:
        """Let a paused guest run again (QEMU ``cont``). :class:`BusyError`
        unless the server is paused."""
        return await self._switch(user, uuid, ServerStatus.ACTIVE, _verb("resume"))

    async def _switch(self, user: User, uuid: str, to: ServerStatus, verb: GuestVerb) -> Server:
        before = ServerStatus.ACTIVE if to is ServerStatus.PAUSED else ServerStatus.PAUSED
        async with self._exclusive(parse_uuid("server", uuid)):
            server = await self.owned(user, uuid)
            if server.status is not before:
                raise BusyError(f"server {uuid} is {server.status.value}, not {before.value}")
            client = await self.fleet.client(server.host)
            await self._on_host(server.uuid, verb(client, server.uuid))
            async with self.store.write() as tx:
                current = await rows.get_server(tx, server.uuid, lock=True)
                # Not so any more: the guest ended meanwhile and its end was processed.
                if current is not None and current.status is before:
                    await rows.set_run_state(tx, server.uuid, to)
            return await self._reread(server.uuid)

    # -- attaching and detaching ---------------------------------------------------

    async def attach_drive(
        self, user: User, uuid: str, device: str, drive: str, *, media: str = "disk"
    ) -> Server:
        """Attach ``drive`` on ``device`` (``ide:B:U``, ``scsi:0:U``, ``block:N``).

        The checks and claim rules are create's. On a running server the
        claim and the configuration change are committed together, then the
        drive is hot-plugged (IDE cannot be: :class:`BusyError`) and
        confirmed; any failure undoes both. On a stopped server it is a
        configuration change. A device already in use is a :class:`BusyError`.
        """
        bus = parse_device_name(device)[0]
        name = device.strip()
        drive = parse_uuid(name, drive)
        try:
            kind = Media(media.strip())
        except ValueError:
            raise UsageError(f"{name}:media: {media[:20]!r} is not disk or cdrom") from None
        async with self._exclusive(parse_uuid("server", uuid)):
            server = await self.owned(user, uuid)
            running = _hotplug_target(server, name, bus)
            if name in server.config:
                raise BusyError(f"{name} of server {uuid} has drive {server.config[name]} already")
            added = {name: drive, **({f"{name}:media": kind.value} if kind is Media.CDROM else {})}
            config = {**server.config, **added}
            (wanted,) = [d for d in parse_server_spec(config).devices if d.name == name]
            async with self.store.write() as tx:
                await _locked(tx, server)
                claim = await self._claim(tx, user, wanted)
                if running:
                    await rows.take_claims(tx, server.uuid, [claim])
                await rows.update_config(tx, server.uuid, config)
            if running:
                disk = self._disk(wanted, None, shared=not claim.exclusive)
                try:
                    client = await self.fleet.client(server.host)
                    await self._on_host(server.uuid, client.attach_disk(server.uuid, disk))
                except BaseException:
                    await self._forget(server.uuid, lambda c: _without_device(c, name), name)
                    raise
            return await self._reread(server.uuid)

    async def detach_drive(self, user: User, uuid: str, device: str) -> Server:
        """Detach the drive on ``device``: on a running server it is
        hot-unplugged first (QEMU's ``DEVICE_DELETED`` awaited, its image
        closed), then its keys and claim go. A guest that does not let go
        of a PCI disk in time (it needs its OS to) is a :class:`BusyError`
        and the drive stays attached."""
        bus = parse_device_name(device)[0]
        name = device.strip()
        async with self._exclusive(parse_uuid("server", uuid)):
            server = await self.owned(user, uuid)
            if name not in server.config:
                raise MissingError(f"server {uuid} has no drive on {name}")
            running = _hotplug_target(server, name, bus)
            if running:
                client = await self.fleet.client(server.host)
                await self._on_host(server.uuid, client.detach_disk(server.uuid, name))
            await self._forget(
                server.uuid, lambda c: _without_device(c, name), name, stopped=not running
            )
            return await self._reread(server.uuid)

    async def attach_nic(
        self,
        user: User,
        uuid: str,
        index: int,
        *,
        model: str = "virtio",
        vlan: str | None = None,
        dhcp: str | None = None,
        mac: str | None = None,
    ) -> Server:
        """Add ``nic:index`` with create's checks (VLAN owned, address owned
        and free or ``auto``, MAC unique on its network); on a running server
        its tap goes on the network's bridge and the card is hot-plugged and
        confirmed, and a failure there takes the NIC out again."""
        prefix = f"nic:{index}"
        given = {"model": model, "vlan": vlan, "dhcp": dhcp, "mac": mac}
        keys = {f"{prefix}:{k}": v for k, v in given.items() if v is not None}
        async with self._exclusive(parse_uuid("server", uuid)):
            server = await self.owned(user, uuid)
            running = _hotplug_target(server, prefix, None)
            if any(k.startswith(f"{prefix}:") for k in server.config):
                raise BusyError(f"server {uuid} has a {prefix} already")
            spec = parse_server_spec({**server.config, **keys})
            (wanted,) = [n for n in spec.nics if n.index == index]
            try:
                async with self.store.write() as tx:
                    await _locked(tx, server)
                    (nic,) = await self._nics(tx, user, dataclasses.replace(spec, nics=(wanted,)))
                    await rows.add_nic(tx, server.uuid, nic)
                    await rows.update_config(tx, server.uuid, {**server.config, **keys})
            except IntegrityError as err:  # a MAC or address taken meanwhile
                raise BusyError(f"{prefix}: its MAC or address was just taken; try again") from err
            if running:
                try:
                    client = await self.fleet.client(server.host)
                    await self._on_host(
                        server.uuid, client.attach_nic(server.uuid, _nic_spec(nic), nic.vlan)
                    )
                except BaseException:
                    await self._forget(server.uuid, lambda c: _without_nic(c, index), nic=index)
                    raise
            return await self._reread(server.uuid)

    async def detach_nic(self, user: User, uuid: str, index: int) -> Server:
        """Remove ``nic:index``: hot-unplugged first on a running server
        (then its tap goes), then its record; its MAC and address are free."""
        async with self._exclusive(parse_uuid("server", uuid)):
            server = await self.owned(user, uuid)
            if all(n.index != index for n in server.nics):
                raise MissingError(f"server {uuid} has no nic:{index}")
            running = _hotplug_target(server, f"nic:{index}", None)
            if running:
                client = await self.fleet.client(server.host)
                await self._on_host(server.uuid, client.detach_nic(server.uuid, index))
            await self._forget(
                server.uuid, lambda c: _without_nic(c, index), nic=index, stopped=not running
            )
            return await self._reread(server.uuid)

    async def _forget(
        self,
        uuid: str,
        change: Callable[[Mapping[str, str]], dict[str, str]],
        device: str | None = None,
        *,
        nic: int | None = None,
        stopped: bool = False,
    ) -> None:
        """Take a device out of a server's record: its configuration keys,
        and the drive's claim or the NIC's row. ``stopped``: only if the
        server is still stopped (else it started meanwhile, with the device)."""
        async with self.store.write() as tx:
            current = await rows.get_server(tx, uuid, lock=True)
            if current is None:
                return
            if stopped and current.status is not ServerStatus.STOPPED:
                raise BusyError(f"server {uuid} started meanwhile; try again")
            if device is not None:
                await rows.release_claim(tx, uuid, device)
            if nic is not None:
                await rows.remove_nic(tx, uuid, nic)
            await rows.update_config(tx, uuid, change(current.config))

    async def _on_host(self, uuid: str, call: Awaitable[None]) -> None:
        try:
            await call
        except MissingError:
            # The store said it runs but the guest has just ended.
            raise BusyError(f"server {uuid} is not running") from None

    @contextlib.asynccontextmanager
    async def _exclusive(self, uuid: str) -> AsyncIterator[None]:
        """One of these state changes of a server at a time in this process:
        each reads the server, acts on its guest, then writes what it did."""
        lock = self._locks.get(uuid)
        if lock is None:
            lock = self._locks[uuid] = asyncio.Lock()
        async with lock:
            yield


def _verb(name: str) -> GuestVerb:
    """Host verb ``name`` on whichever client runs the guest (a method of
    the protocol class would run the protocol's body, not the client's)."""

    async def call(client: HostClient, server: str) -> None:
        await getattr(client, name)(server)

    return call


#: QMP run states that are a server's, and the status each means.
_RUN_STATES = {"running": ServerStatus.ACTIVE, "paused": ServerStatus.PAUSED}


def _hotplug_target(server: Server, name: str, bus: Bus | None) -> bool:
    """Whether a device change on ``name`` is a hot-plug (the server runs)
    or a configuration change (it is stopped); :class:`BusyError` otherwise."""
    if server.status is ServerStatus.STOPPED:
        return False
    if server.status is ServerStatus.PAUSED:
        raise BusyError(f"server {server.uuid} is paused: resume it to change its devices")
    if server.status is not ServerStatus.ACTIVE:
        raise BusyError(f"server {server.uuid} is {server.status.value}; try again once it runs")
    if bus is Bus.IDE:
        raise BusyError(
            f"{name}: IDE drives cannot be attached or detached while server {server.uuid} "
            "runs (AHCI has no hot-plug); stop it first, or use scsi:0:U or block:N"
        )
    return True


async def _locked(tx: Tx, server: Server) -> None:
    """Lock the server's row; it must be as ``server`` was read."""
    current = await rows.get_server(tx, server.uuid, lock=True)
    if current is None:
        raise MissingError(f"no server {server.uuid}")
    if current.status is not server.status or current.config != server.config:
        raise BusyError(f"server {server.uuid} changed meanwhile; try again")


def _without_device(config: Mapping[str, str], name: str) -> dict[str, str]:
    kept = {k: v for k, v in config.items() if k not in (name, f"{name}:media")}
    if "boot" in kept:
        boot = [d for d in kept["boot"].split() if d != name]
        if boot:
            kept["boot"] = " ".join(boot)
        else:
            del kept["boot"]
    return kept


def _without_nic(config: Mapping[str, str], index: int) -> dict[str, str]:
    return {k: v for k, v in config.items() if not k.startswith(f"nic:{index}:")}


def _nic_spec(nic: Nic) -> NicSpec:
    return NicSpec(model=_MODEL[nic.model], mac=nic.mac, index=nic.index)


def _disk_device_id(name: str) -> str:
    """QEMU's id of the disk on a device (as the host reports it in info)."""
    return "drive-" + name.replace(":", "-")
