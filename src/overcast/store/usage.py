"""The billing ledger's rows.

Usage is recorded as intervals that tile time without overlap: a server's
run from ``started`` to its end, a drive's life from ``created`` to its
destruction, each cut wherever a row was written (a periodic "exists"
tick, a change of size or cpu, the end). The row's ``billed`` column is
where the last interval stopped, so the next one begins exactly there and
the sum over a server's rows is its running time, whatever order ticks and
ends come in.

Every function here takes the caller's transaction: an end is billed in
the transaction that ends the server, so the two are committed together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from overcast.store.engine import Tx
from overcast.store.rows import now
from overcast.store.tables import drives, servers, usage

__all__ = [
    "RUNNING",
    "Usage",
    "bill_drive",
    "bill_drives",
    "bill_server",
    "bill_servers",
    "usage_between",
]

Kind = Literal["server", "drive"]

#: The statuses in which a server's guest runs, and so is billed.
RUNNING = ("active", "paused")


@dataclass(frozen=True)
class Usage:
    """One interval of use, as the ledger holds it."""

    id: int
    user: str
    kind: str
    object: str
    start: float
    end: float
    cpu: int | None
    mem: int | None
    bytes: int | None
    reason: str
    recorded: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _usage(row: Any) -> Usage:
    return Usage(
        id=row.id,
        user=row.user,
        kind=row.kind,
        object=row.object,
        start=row.start,
        end=row.end,
        cpu=row.cpu,
        mem=row.mem,
        bytes=row.bytes,
        reason=row.reason,
        recorded=row.recorded,
    )


async def bill_server(tx: Tx, uuid: str, until: float, reason: str) -> float:
    """Record the server's use from its mark to ``until`` and move the mark
    there; returns the seconds recorded (0 when it does not run).

    ``until`` before the mark (an end seen after a tick that already passed
    it) records nothing: a tick overshoots an end only by the time the end
    took to be processed.
    """
    row = (
        await tx.execute(
            sa.select(
                servers.c.user,
                servers.c.cpu,
                servers.c.mem,
                servers.c.status,
                servers.c.started,
                servers.c.billed,
            )
            .where(servers.c.uuid == uuid)
            .with_for_update()
        )
    ).first()
    if row is None or row.status not in RUNNING or row.started is None:
        return 0.0
    start: float = row.billed if row.billed is not None else row.started
    if until <= start:
        return 0.0
    await tx.execute(
        usage.insert().values(
            user=row.user,
            kind="server",
            object=uuid,
            start=start,
            end=until,
            cpu=row.cpu,
            mem=row.mem,
            reason=reason,
            recorded=now(),
        )
    )
    await tx.execute(servers.update().where(servers.c.uuid == uuid).values(billed=until))
    return until - start


async def bill_servers(tx: Tx, until: float, reason: str) -> int:
    """:func:`bill_server` for every running server at once; returns how
    many rows were written."""
    start = sa.func.coalesce(servers.c.billed, servers.c.started).label("start")
    due = sa.and_(servers.c.status.in_(RUNNING), servers.c.started.is_not(None), start < until)
    rows = (
        await tx.execute(
            sa.select(servers.c.uuid, servers.c.user, servers.c.cpu, servers.c.mem, start)
            .where(due)
            .with_for_update()
        )
    ).all()
    if not rows:
        return 0
    recorded = now()
    await tx.execute(
        usage.insert(),
        [
            {
                "user": r.user,
                "kind": "server",
                "object": r.uuid,
                "start": r.start,
                "end": until,
                "cpu": r.cpu,
                "mem": r.mem,
                "bytes": None,
                "reason": reason,
                "recorded": recorded,
            }
            for r in rows
        ],
    )
    await tx.execute(
        servers.update().where(servers.c.uuid.in_([r.uuid for r in rows])).values(billed=until)
    )
    return len(rows)


async def bill_drive(tx: Tx, uuid: str, until: float, reason: str) -> float:
    """Record a drive's size over time from its mark to ``until``; library
    drives (no owner) are nobody's usage."""
    row = (
        await tx.execute(
            sa.select(drives.c.user, drives.c.size, drives.c.created, drives.c.billed)
            .where(drives.c.uuid == uuid)
            .with_for_update()
        )
    ).first()
    if row is None or row.user is None:
        return 0.0
    start: float = row.billed if row.billed is not None else row.created
    if until <= start:
        return 0.0
    await tx.execute(
        usage.insert().values(
            user=row.user,
            kind="drive",
            object=uuid,
            start=start,
            end=until,
            bytes=row.size,
            reason=reason,
            recorded=now(),
        )
    )
    await tx.execute(drives.update().where(drives.c.uuid == uuid).values(billed=until))
    return until - start


async def bill_drives(tx: Tx, until: float, reason: str) -> int:
    """:func:`bill_drive` for every owned drive at once."""
    start = sa.func.coalesce(drives.c.billed, drives.c.created).label("start")
    due = sa.and_(drives.c.user.is_not(None), start < until)
    rows = (
        await tx.execute(
            sa.select(drives.c.uuid, drives.c.user, drives.c.size, start)
            .where(due)
            .with_for_update()
        )
    ).all()
    if not rows:
        return 0
    recorded = now()
    await tx.execute(
        usage.insert(),
        [
            {
                "user": r.user,
                "kind": "drive",
                "object": r.uuid,
                "start": r.start,
                "end": until,
                "cpu": None,
                "mem": None,
                "bytes": r.size,
                "reason": reason,
                "recorded": recorded,
            }
            for r in rows
        ],
    )
    await tx.execute(
        drives.update().where(drives.c.uuid.in_([r.uuid for r in rows])).values(billed=until)
    )
    return len(rows)


async def usage_between(
    tx: Tx, user: str | None, start: float, end: float, *, object: str | None = None
) -> list[Usage]:
    """Rows that overlap [start, end): one user's, or (None) everyone's."""
    query = (
        sa.select(usage)
        .where(usage.c.end > start, usage.c.start < end)
        .order_by(usage.c.start, usage.c.id)
    )
    if user is not None:
        query = query.where(usage.c.user == user)
    if object is not None:
        query = query.where(usage.c.object == object)
    return [_usage(r) for r in (await tx.execute(query)).all()]
