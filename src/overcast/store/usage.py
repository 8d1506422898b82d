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


async def _bill(
    tx: Tx,
    kind: Kind,
    which: sa.ColumnElement[bool],
    until: float,
    reason: str,
) -> dict[str, float]:
    """Record use from each chosen object's mark to ``until`` and move the
    marks there, in one statement each; returns seconds recorded by object.

    A mark at or past ``until`` (an end seen after a tick already passed it)
    records nothing: a tick overshoots an end only by the time the end took
    to be processed. Rows are locked (PostgreSQL), so a tick and an end
    racing for one object bill each second once.
    """
    if kind == "server":
        table, begun = servers, servers.c.started
        measures = [servers.c.cpu, servers.c.mem]
        running = sa.and_(servers.c.status.in_(RUNNING), servers.c.started.is_not(None))
    else:
        table, begun = drives, drives.c.created
        measures = [drives.c.size]
        # Library drives (no owner) are nobody's usage.
        running = drives.c.user.is_not(None)
    start = sa.func.coalesce(table.c.billed, begun).label("start")
    found = (
        await tx.execute(
            sa.select(table.c.uuid, table.c.user, start, *measures)
            .where(which, running, start < until)
            .with_for_update()
        )
    ).all()
    if not found:
        return {}
    recorded = now()
    await tx.execute(
        usage.insert(),
        [
            {
                "user": r.user,
                "kind": kind,
                "object": r.uuid,
                "start": r.start,
                "end": until,
                "cpu": r.cpu if kind == "server" else None,
                "mem": r.mem if kind == "server" else None,
                "bytes": r.size if kind == "drive" else None,
                "reason": reason,
                "recorded": recorded,
            }
            for r in found
        ],
    )
    billed = [r.uuid for r in found]
    await tx.execute(table.update().where(table.c.uuid.in_(billed)).values(billed=until))
    return {r.uuid: until - r.start for r in found}


async def bill_server(tx: Tx, uuid: str, until: float, reason: str) -> float:
    """Record the server's use from its mark to ``until`` and move the mark
    there; returns the seconds recorded (0 when it does not run)."""
    return (await _bill(tx, "server", servers.c.uuid == uuid, until, reason)).get(uuid, 0.0)


async def bill_servers(tx: Tx, until: float, reason: str) -> int:
    """:func:`bill_server` for every running server at once; returns how
    many rows were written."""
    return len(await _bill(tx, "server", sa.true(), until, reason))


async def bill_drive(tx: Tx, uuid: str, until: float, reason: str) -> float:
    """Record a drive's size over time from its mark to ``until``."""
    return (await _bill(tx, "drive", drives.c.uuid == uuid, until, reason)).get(uuid, 0.0)


async def bill_drives(tx: Tx, until: float, reason: str) -> int:
    """:func:`bill_drive` for every owned drive at once."""
    return len(await _bill(tx, "drive", sa.true(), until, reason))


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
