"""IP pools, IP and VLAN rows."""

from __future__ import annotations

import ipaddress
from typing import Any

import sqlalchemy as sa

from overcast.model.resource import Ip, Vlan
from overcast.store.engine import Tx
from overcast.store.rows import join_words, now, split_words
from overcast.store.tables import ip_pools, ips, vlans

__all__ = [
    "Pool",
    "add_pool",
    "allocated_in",
    "delete_ip",
    "delete_vlan",
    "get_ip",
    "get_vlan",
    "insert_ip",
    "insert_vlan",
    "list_ips",
    "list_pools",
    "list_vlans",
    "update_ip",
    "update_vlan",
]


class Pool:
    """An operator's address range, with what DHCP will tell guests."""

    def __init__(self, cidr: str, gateway: str | None, nameserver: str | None) -> None:
        self.network = ipaddress.ip_network(cidr)
        self.cidr = cidr
        self.gateway = gateway
        self.nameserver = nameserver

    @property
    def netmask(self) -> str:
        return str(self.network.netmask)


async def add_pool(conn: Tx, cidr: str, gateway: str | None, nameserver: str | None) -> None:
    await conn.execute(ip_pools.insert().values(cidr=cidr, gateway=gateway, nameserver=nameserver))


async def list_pools(conn: Tx) -> list[Pool]:
    rows = await conn.execute(ip_pools.select().order_by(ip_pools.c.cidr))
    return [Pool(r.cidr, r.gateway, r.nameserver) for r in rows]


async def allocated_in(conn: Tx, cidr: str) -> set[str]:
    rows = await conn.execute(sa.select(ips.c.address).where(ips.c.pool == cidr))
    return {r.address for r in rows}


def _ip(row: Any) -> Ip:
    pool = Pool(row.cidr, row.gateway, row.nameserver)
    return Ip(
        address=row.address,
        user=row.user,
        name=row.name,
        netmask=pool.netmask,
        gateway=row.gateway,
        nameserver=row.nameserver,
        tags=split_words(row.tags),
        meta=dict(row.meta),
    )


def _ip_query() -> sa.Select[Any]:
    return sa.select(ips, ip_pools.c.cidr, ip_pools.c.gateway, ip_pools.c.nameserver).join(
        ip_pools, ip_pools.c.cidr == ips.c.pool
    )


async def insert_ip(conn: Tx, address: str, pool: str, user: str, name: str) -> None:
    await conn.execute(
        ips.insert().values(
            address=address, pool=pool, user=user, name=name, tags="", meta={}, created=now()
        )
    )


async def get_ip(conn: Tx, address: str) -> Ip | None:
    row = (await conn.execute(_ip_query().where(ips.c.address == address))).first()
    return _ip(row) if row else None


async def list_ips(conn: Tx, user: str) -> list[Ip]:
    rows = await conn.execute(
        _ip_query().where(ips.c.user == user).order_by(ips.c.created, ips.c.address)
    )
    return [_ip(r) for r in rows]


def _changes(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "tags" in out:
        out["tags"] = join_words(out["tags"])
    if "meta" in out:
        out["meta"] = dict(out["meta"])
    return out


async def update_ip(conn: Tx, address: str, **values: Any) -> None:
    await conn.execute(ips.update().where(ips.c.address == address).values(**_changes(values)))


async def delete_ip(conn: Tx, address: str) -> None:
    await conn.execute(ips.delete().where(ips.c.address == address))


def _vlan(row: Any) -> Vlan:
    return Vlan(
        uuid=row.uuid, user=row.user, name=row.name, tags=split_words(row.tags), meta=dict(row.meta)
    )


async def insert_vlan(conn: Tx, uuid: str, user: str, name: str) -> None:
    await conn.execute(
        vlans.insert().values(uuid=uuid, user=user, name=name, tags="", meta={}, created=now())
    )


async def get_vlan(conn: Tx, uuid: str) -> Vlan | None:
    row = (await conn.execute(vlans.select().where(vlans.c.uuid == uuid))).first()
    return _vlan(row) if row else None


async def list_vlans(conn: Tx, user: str) -> list[Vlan]:
    rows = await conn.execute(
        vlans.select().where(vlans.c.user == user).order_by(vlans.c.created, vlans.c.uuid)
    )
    return [_vlan(r) for r in rows]


async def update_vlan(conn: Tx, uuid: str, **values: Any) -> None:
    await conn.execute(vlans.update().where(vlans.c.uuid == uuid).values(**_changes(values)))


async def delete_vlan(conn: Tx, uuid: str) -> None:
    await conn.execute(vlans.delete().where(vlans.c.uuid == uuid))
