"""The outbox's rows: events, the feed over them, and their deliveries.

An event is appended by the same write transaction as the state change it
reports, so a committed change always has its event and a rolled back one
never does. :func:`append_event` numbers a server's events (``seq``) inside
that transaction; two writers racing for one server's next number lose
with an :class:`sqlalchemy.exc.IntegrityError` (the unique ``(server,
seq)``), as callers that change a server already serialise on its row.

Deliveries: :func:`due_deliveries` hands out only the oldest pending event
of each (server, URL), so a receiver never gets a server's event N+1 before
event N has been delivered (or abandoned). What to retry when, and the
HTTP itself, belong to :mod:`overcast.events.delivery`.

On PostgreSQL an ``id`` is taken at insert and becomes visible at commit,
so two appending transactions could commit out of id order and a feed
reader at ``id > cursor`` skip the earlier one. :func:`append_event` takes
a transaction-scoped advisory lock first, so appending transactions run
their append-to-commit one at a time, in id order. (SQLite has one writer.)
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from overcast.store.engine import Tx
from overcast.store.rows import now
from overcast.store.tables import deliveries, events

__all__ = [
    "Delivery",
    "Event",
    "append_event",
    "due_deliveries",
    "events_after",
    "get_delivery",
    "mark_delivered",
    "mark_failed",
]


#: The advisory lock that orders appends on PostgreSQL ("oc-event" in ASCII).
_APPEND_LOCK = 0x6F632D6576656E74


@dataclass(frozen=True)
class Event:
    """One exit or revive, as the outbox holds it."""

    id: int
    uuid: str
    type: str
    user: str
    server: str
    seq: int
    reason: str
    at: float
    body: Mapping[str, Any]
    callback: str | None


@dataclass(frozen=True)
class Delivery:
    """A callback of ``event`` to ``url``; pending unless delivered or abandoned."""

    event: Event
    url: str
    attempts: int
    next_attempt: float
    delivered_at: float | None
    abandoned_at: float | None
    last_error: str | None
    created: float


def _event(row: Any) -> Event:
    return Event(
        id=row.id,
        uuid=row.uuid,
        type=row.type,
        user=row.user,
        server=row.server,
        seq=row.seq,
        reason=row.reason,
        at=row.at,
        body=row.body,
        callback=row.callback,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        event=_event(row),
        url=row.url,
        attempts=row.attempts,
        next_attempt=row.next_attempt,
        delivered_at=row.delivered_at,
        abandoned_at=row.abandoned_at,
        last_error=row.last_error,
        created=row.created,
    )


_DELIVERY_COLUMNS = (
    *events.c,
    deliveries.c.url,
    deliveries.c.attempts,
    deliveries.c.next_attempt,
    deliveries.c.delivered_at,
    deliveries.c.abandoned_at,
    deliveries.c.last_error,
    deliveries.c.created,
)


async def append_event(
    tx: Tx,
    *,
    type: str,
    user: str,
    server: str,
    reason: str,
    at: float,
    body: Mapping[str, Any],
    callback: str | None,
) -> Event:
    """Append an event (and its delivery, when it has a ``callback``),
    numbered after the server's last one; due at once."""
    if tx.dialect == "postgresql":
        await tx.execute(sa.select(sa.func.pg_advisory_xact_lock(_APPEND_LOCK)))
    last = (
        await tx.execute(sa.select(sa.func.max(events.c.seq)).where(events.c.server == server))
    ).scalar_one()
    seq = (last or 0) + 1
    event_uuid = str(_uuid.uuid4())
    result = await tx.execute(
        events.insert()
        .values(
            uuid=event_uuid,
            type=type,
            user=user,
            server=server,
            seq=seq,
            reason=reason,
            at=at,
            body=dict(body),
            callback=callback,
        )
        .returning(events.c.id)
    )
    event_id: int = result.scalar_one()
    if callback is not None:
        created = now()
        await tx.execute(
            deliveries.insert().values(
                event=event_id, url=callback, attempts=0, next_attempt=created, created=created
            )
        )
    return Event(event_id, event_uuid, type, user, server, seq, reason, at, dict(body), callback)


async def events_after(tx: Tx, user: str | None, cursor: int, limit: int) -> list[Event]:
    """Up to ``limit`` events with ``id > cursor`` in id order: one user's,
    or everybody's (``user`` None, for admins)."""
    query = sa.select(events).where(events.c.id > cursor).order_by(events.c.id).limit(limit)
    if user is not None:
        query = query.where(events.c.user == user)
    return [_event(row) for row in (await tx.execute(query)).all()]


async def due_deliveries(tx: Tx, at: float, limit: int) -> list[Delivery]:
    """Pending deliveries due by ``at``, soonest first, each the oldest
    pending one of its (server, URL): the next in per-server order."""
    earlier = sa.alias(deliveries, "earlier")
    earlier_event = sa.alias(events, "earlier_event")
    blocked = (
        sa.select(sa.literal(1))
        .select_from(earlier.join(earlier_event, earlier_event.c.id == earlier.c.event))
        .where(
            earlier_event.c.server == events.c.server,
            earlier_event.c.seq < events.c.seq,
            earlier.c.url == deliveries.c.url,
            earlier.c.delivered_at.is_(None),
            earlier.c.abandoned_at.is_(None),
        )
    )
    query = (
        sa.select(*_DELIVERY_COLUMNS)
        .select_from(deliveries.join(events, events.c.id == deliveries.c.event))
        .where(
            deliveries.c.delivered_at.is_(None),
            deliveries.c.abandoned_at.is_(None),
            deliveries.c.next_attempt <= at,
            ~blocked.exists(),
        )
        .order_by(deliveries.c.next_attempt, deliveries.c.event)
        .limit(limit)
    )
    return [_delivery(row) for row in (await tx.execute(query)).all()]


async def get_delivery(tx: Tx, event_id: int) -> Delivery | None:
    query = (
        sa.select(*_DELIVERY_COLUMNS)
        .select_from(deliveries.join(events, events.c.id == deliveries.c.event))
        .where(deliveries.c.event == event_id)
    )
    row = (await tx.execute(query)).one_or_none()
    return None if row is None else _delivery(row)


async def mark_delivered(tx: Tx, event_id: int, at: float) -> None:
    """The receiver acknowledged (a 2xx): this delivery is over."""
    await tx.execute(
        deliveries.update()
        .where(deliveries.c.event == event_id)
        .values(attempts=deliveries.c.attempts + 1, delivered_at=at, last_error=None)
    )


async def mark_failed(tx: Tx, event_id: int, next_attempt: float | None, error: str) -> None:
    """An attempt failed: retry at ``next_attempt``, or (None) give up."""
    values: dict[str, Any] = {"attempts": deliveries.c.attempts + 1, "last_error": error[:1000]}
    if next_attempt is None:
        values["abandoned_at"] = now()
    else:
        values["next_attempt"] = next_attempt
    await tx.execute(deliveries.update().where(deliveries.c.event == event_id).values(**values))
