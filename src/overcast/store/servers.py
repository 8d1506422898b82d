"""Server rows, their NICs and drive claims: what the create path checks and takes.

The store guarantees what constraints can: a claim and a NIC belong to a
server that exists and go with it; a MAC is used once per network, an
address by one NIC, a VNC port once per host; a VLAN with a NIC on it
cannot be deleted. A lost race for any of these is an
:class:`sqlalchemy.exc.IntegrityError`.

What needs a look before acting (is this exclusive drive claimed, is the
user under quota, has the host room) is the service's check, done in the
same write transaction after locking the row it depends on: the drive's
(``get_drive(..., lock=True)``) before :func:`drive_claims`, the user's
(``get_user(..., lock=True)``) before :func:`usage`. See
:mod:`overcast.store.engine`.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa

from overcast.model.server import Nic, NicModel, Server, ServerSpec, ServerStatus, parse_server_spec
from overcast.store.engine import Tx
from overcast.store.rows import now
from overcast.store.tables import claims, nics, servers

__all__ = [
    "Claim",
    "DriveClaim",
    "add_nic",
    "delete_server",
    "drive_claims",
    "get_server",
    "host_loads",
    "host_usage",
    "hosts_running",
    "insert_server",
    "ip_in_use",
    "list_servers",
    "mac_in_use",
    "release_claim",
    "release_claims",
    "remove_nic",
    "server_claims",
    "servers_on_host",
    "set_host",
    "set_run_state",
    "set_status",
    "set_vnc",
    "take_claims",
    "update_config",
    "usage",
    "vlan_in_use",
    "vnc_ports",
]

#: The public network's key in ``nics.network`` (a VLAN's is its UUID).
_PUBLIC = ""


class Claim(NamedTuple):
    """A drive a server attaches on ``device``; ``exclusive`` unless the
    drive's claim type is shared."""

    drive: str
    device: str
    exclusive: bool


class DriveClaim(NamedTuple):
    """A claim seen from its drive: which server holds it, and how."""

    server: str
    device: str
    exclusive: bool


def _spec_columns(spec: ServerSpec) -> dict[str, Any]:
    """The columns that repeat the configuration, for SQL sums."""
    return {
        "name": spec.name,
        "persistent": spec.persistent,
        "cpu": spec.cpu,
        "mem": spec.mem,
        "smp": spec.smp,
    }


def _check_nics(server: Server) -> None:
    """The realised NICs are the configured ones: same slots, models and
    VLANs, and the configured MAC where one was given."""
    wanted = [(n.index, n.model, n.vlan) for n in server.spec.nics]
    if wanted != [(n.index, n.model, n.vlan) for n in server.nics]:
        raise ValueError(f"server {server.uuid}: NICs {server.nics} are not those configured")
    for spec, nic in zip(server.spec.nics, server.nics, strict=True):
        if spec.mac is not None and spec.mac != nic.mac:
            raise ValueError(f"server {server.uuid}: nic:{nic.index} MAC is not the configured one")


async def insert_server(tx: Tx, server: Server, claimed: Iterable[Claim] = ()) -> None:
    """Write a new server with its NICs and (when it is to run) its claims.

    Raises :class:`ValueError` when ``server.nics`` does not realise the
    configured NICs: that is a bug of the caller, not a conflict.
    """
    _check_nics(server)
    await tx.execute(
        servers.insert().values(
            uuid=server.uuid,
            user=server.user,
            status=server.status.value,
            host=server.host,
            config=dict(server.config),
            vnc_ip=server.vnc_ip,
            vnc_port=server.vnc_port,
            started=server.started,
            created=now(),
            **_spec_columns(server.spec),
        )
    )
    if server.nics:
        await tx.execute(nics.insert().values([_nic_row(server.uuid, n) for n in server.nics]))
    await take_claims(tx, server.uuid, claimed)


def _nic_row(server: str, nic: Nic) -> dict[str, Any]:
    return {
        "server": server,
        "slot": nic.index,
        "model": nic.model.value,
        "mac": nic.mac,
        "vlan": nic.vlan,
        "network": nic.vlan or _PUBLIC,
        "ip": nic.ip,
    }


async def add_nic(tx: Tx, server: str, nic: Nic) -> None:
    """Give an existing server one more NIC (hot-plug, or a stopped server's
    new card); the caller puts its ``nic:N:*`` keys in the configuration in
    the same transaction. A MAC or address taken meanwhile is an
    :class:`sqlalchemy.exc.IntegrityError`."""
    await tx.execute(nics.insert().values(_nic_row(server, nic)))


async def remove_nic(tx: Tx, server: str, index: int) -> None:
    """Drop NIC ``index`` of a server (its MAC and address are free again)."""
    await tx.execute(nics.delete().where(nics.c.server == server, nics.c.slot == index))


async def take_claims(tx: Tx, server: str, claimed: Iterable[Claim]) -> None:
    """Claim drives for a server that is about to run (create, start).

    A server deleted meanwhile (a destroy racing a start) cannot be given
    claims: its foreign key refuses them, so no drive stays busy for a
    server that no longer exists.
    """
    rows = [
        {"drive": c.drive, "server": server, "device": c.device, "exclusive": c.exclusive}
        for c in claimed
    ]
    if rows:
        await tx.execute(claims.insert().values(rows))


async def release_claims(tx: Tx, server: str) -> None:
    """Let go of a server's drives: it stopped and keeps only its definition."""
    await tx.execute(claims.delete().where(claims.c.server == server))


async def release_claim(tx: Tx, server: str, device: str) -> None:
    """Let go of the drive on one device of a server (it was detached)."""
    await tx.execute(claims.delete().where(claims.c.server == server, claims.c.device == device))


def _nic(row: Any) -> Nic:
    return Nic(index=row.slot, model=NicModel(row.model), mac=row.mac, vlan=row.vlan, ip=row.ip)


def _server(row: Any, realised: Iterable[Nic]) -> Server:
    return Server(
        uuid=row.uuid,
        user=row.user,
        config=dict(row.config),
        status=ServerStatus(row.status),
        host=row.host,
        nics=tuple(sorted(realised, key=lambda nic: nic.index)),
        started=row.started,
        vnc_ip=row.vnc_ip,
        vnc_port=row.vnc_port,
    )


async def get_server(tx: Tx, uuid: str, *, lock: bool = False) -> Server | None:
    """The server; ``lock`` holds its row until commit, which serializes
    state changes of one server (start against destroy, exit against set)."""
    query = servers.select().where(servers.c.uuid == uuid)
    row = (await tx.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        return None
    found = await tx.execute(nics.select().where(nics.c.server == uuid))
    return _server(row, (_nic(n) for n in found))


async def list_servers(tx: Tx, user: str) -> list[Server]:
    """The user's servers in creation order."""
    return await tx.run_sync(functools.partial(_list, where=servers.c.user == user))


async def servers_on_host(tx: Tx, host: str) -> list[Server]:
    """Every server placed on the host, in creation order: what it should be
    running (or holding stopped), for adoption and reconciliation."""
    return await tx.run_sync(functools.partial(_list, where=servers.c.host == host))


def _list(conn: sa.Connection, *, where: sa.ColumnElement[bool]) -> list[Server]:
    # One NIC query for the whole list rather than one per server.
    realised: dict[str, list[Nic]] = defaultdict(list)
    query = sa.select(nics).join(servers, servers.c.uuid == nics.c.server).where(where)
    for row in conn.execute(query):
        realised[row.server].append(_nic(row))
    rows = conn.execute(servers.select().where(where).order_by(servers.c.created, servers.c.uuid))
    return [_server(r, realised.get(r.uuid, ())) for r in rows]


async def set_status(tx: Tx, uuid: str, status: ServerStatus, started: float | None = None) -> None:
    """Record a new status and the time the guest started (None: not running).

    The ledger's mark goes back to empty: a run's usage is counted from its
    own start (the caller billed the run that ended, in the same transaction).
    """
    await tx.execute(
        servers.update()
        .where(servers.c.uuid == uuid)
        .values(status=status.value, started=started, billed=None)
    )


async def set_run_state(tx: Tx, uuid: str, status: ServerStatus) -> None:
    """Switch a guest that runs between ``active`` and ``paused``: the same
    run goes on, so ``started`` and the ledger's mark stay (a paused guest
    is billed as a running one)."""
    if status not in (ServerStatus.ACTIVE, ServerStatus.PAUSED):
        raise ValueError(f"{status} is not a state of a running guest")
    await tx.execute(servers.update().where(servers.c.uuid == uuid).values(status=status.value))


async def set_vnc(tx: Tx, uuid: str, ip: str | None, port: int | None) -> None:
    """Record where the guest's VNC server listens, or (None) that it has none."""
    await tx.execute(
        servers.update().where(servers.c.uuid == uuid).values(vnc_ip=ip, vnc_port=port)
    )


async def update_config(tx: Tx, uuid: str, config: Mapping[str, str]) -> None:
    """Replace the configuration (``set``), with the columns that repeat it.

    The NICs are not rewritten: a running server's NICs do not change, and
    a stopped one's are the caller's to replace (delete and insert the
    server again, in one transaction).
    """
    spec = parse_server_spec(dict(config))
    await tx.execute(
        servers.update()
        .where(servers.c.uuid == uuid)
        .values(config=dict(config), **_spec_columns(spec))
    )


async def delete_server(tx: Tx, uuid: str) -> None:
    """Delete the server; its claims and NICs go with it (foreign keys)."""
    await tx.execute(servers.delete().where(servers.c.uuid == uuid))


async def drive_claims(tx: Tx, drive: str) -> list[DriveClaim]:
    """Who holds the drive. Lock the drive's row first when acting on the
    answer (see the module docstring)."""
    rows = await tx.execute(
        sa.select(claims.c.server, claims.c.device, claims.c.exclusive)
        .where(claims.c.drive == drive)
        .order_by(claims.c.server)
    )
    return [DriveClaim(r.server, r.device, r.exclusive) for r in rows]


async def server_claims(tx: Tx, server: str) -> list[Claim]:
    """The claims a server holds (a revival starts it with the same)."""
    rows = await tx.execute(
        sa.select(claims.c.drive, claims.c.device, claims.c.exclusive).where(
            claims.c.server == server
        )
    )
    return [Claim(r.drive, r.device, r.exclusive) for r in rows]


async def _sums(tx: Tx, where: sa.ColumnElement[bool]) -> Any:
    query = sa.select(
        sa.func.count().label("servers"),
        sa.func.coalesce(sa.func.sum(servers.c.cpu), 0).label("cpu"),
        sa.func.coalesce(sa.func.sum(servers.c.mem), 0).label("mem"),
    ).where(where, servers.c.status != ServerStatus.STOPPED.value)
    return (await tx.execute(query)).one()


async def usage(tx: Tx, user: str) -> tuple[int, int, int]:
    """(servers, cpu, mem) of the user's servers that are not stopped: what
    the quota limits. A stopped server keeps its definition only."""
    row = await _sums(tx, servers.c.user == user)
    return int(row.servers), int(row.cpu), int(row.mem)


async def host_usage(tx: Tx, host: str) -> tuple[int, int, int]:
    """(cpu, mem, servers) taken on a host by servers that are not stopped."""
    row = await _sums(tx, servers.c.host == host)
    return int(row.cpu), int(row.mem), int(row.servers)


async def host_loads(tx: Tx) -> dict[str, tuple[int, int, int]]:
    """host → (cpu, mem, servers) taken by servers that are not stopped, for
    every host that runs any: placement's view, in one query."""
    query = (
        sa.select(
            servers.c.host,
            sa.func.count().label("servers"),
            sa.func.coalesce(sa.func.sum(servers.c.cpu), 0).label("cpu"),
            sa.func.coalesce(sa.func.sum(servers.c.mem), 0).label("mem"),
        )
        .where(servers.c.status != ServerStatus.STOPPED.value)
        .group_by(servers.c.host)
    )
    return {r.host: (int(r.cpu), int(r.mem), int(r.servers)) for r in await tx.execute(query)}


async def hosts_running(tx: Tx, uuids: Iterable[str], drives: Iterable[str]) -> set[str]:
    """The hosts running any of the servers ``uuids``, or a server that
    claims any of ``drives``: where ``avoid:servers``/``avoid:drives`` forbid."""
    uuids, drives = list(uuids), list(drives)
    running = servers.c.status != ServerStatus.STOPPED.value
    found: set[str] = set()
    if uuids:
        query = sa.select(servers.c.host).where(servers.c.uuid.in_(uuids), running)
        found |= {r.host for r in await tx.execute(query)}
    if drives:
        query = (
            sa.select(servers.c.host)
            .join(claims, claims.c.server == servers.c.uuid)
            .where(claims.c.drive.in_(drives), running)
        )
        found |= {r.host for r in await tx.execute(query)}
    return found


async def set_host(tx: Tx, uuid: str, host: str) -> None:
    """Move a server's record to another host (a revival)."""
    await tx.execute(servers.update().where(servers.c.uuid == uuid).values(host=host))


async def vnc_ports(tx: Tx, host: str) -> set[int]:
    """The VNC ports in use on a host, to pick a free one."""
    rows = await tx.execute(
        sa.select(servers.c.vnc_port).where(servers.c.host == host, servers.c.vnc_port.is_not(None))
    )
    return {r.vnc_port for r in rows}


async def _holder(tx: Tx, where: sa.ColumnElement[bool]) -> str | None:
    row = (
        await tx.execute(sa.select(nics.c.server).where(where).order_by(nics.c.server).limit(1))
    ).first()
    return row.server if row else None


async def ip_in_use(tx: Tx, address: str) -> str | None:
    """The server whose NIC uses the public address, if any."""
    return await _holder(tx, nics.c.ip == address)


async def vlan_in_use(tx: Tx, vlan: str) -> str | None:
    """A server with a NIC on the VLAN, if any."""
    return await _holder(tx, nics.c.network == vlan)


async def mac_in_use(tx: Tx, vlan: str | None, mac: str) -> str | None:
    """The server whose NIC has the MAC on that network (None: the public one)."""
    return await _holder(tx, sa.and_(nics.c.network == (vlan or _PUBLIC), nics.c.mac == mac))
