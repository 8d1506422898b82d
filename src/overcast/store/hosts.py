"""Host rows: the registry a manager places guests from."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from overcast.model.host import Host
from overcast.store.engine import Tx
from overcast.store.rows import now
from overcast.store.tables import hosts

__all__ = ["delete_host", "get_host", "insert_host", "list_hosts", "update_host"]


def _host(row: Any) -> Host:
    return Host(
        id=row.id, name=row.name, url=row.url, cpu=row.cpu, mem=row.mem, draining=row.draining
    )


async def insert_host(tx: Tx, host: Host) -> None:
    """A URL already registered is an :class:`sqlalchemy.exc.IntegrityError`."""
    await tx.execute(
        hosts.insert().values(
            id=host.id,
            name=host.name,
            url=host.url,
            cpu=host.cpu,
            mem=host.mem,
            draining=host.draining,
            created=now(),
        )
    )


async def get_host(tx: Tx, id: str, *, lock: bool = False) -> Host | None:
    query = hosts.select().where(hosts.c.id == id)
    row = (await tx.execute(query.with_for_update() if lock else query)).first()
    return None if row is None else _host(row)


async def list_hosts(tx: Tx) -> list[Host]:
    """In registration order."""
    rows = await tx.execute(hosts.select().order_by(hosts.c.created, hosts.c.id))
    return [_host(r) for r in rows]


async def update_host(tx: Tx, host: Host) -> None:
    await tx.execute(
        hosts.update()
        .where(hosts.c.id == host.id)
        .values(name=host.name, cpu=host.cpu, mem=host.mem, draining=host.draining)
    )


async def delete_host(tx: Tx, id: str) -> None:
    await tx.execute(sa.delete(hosts).where(hosts.c.id == id))
