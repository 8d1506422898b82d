"""Writing events into the outbox, and what a callback carries.

An event is recorded by the caller's own write transaction (the one that
stops or deletes the server), never by a second one: a crash between the
two would lose the event or invent it. Delivery reads it back later
(:mod:`overcast.events.delivery`), as many times as it takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from overcast.store import events as rows
from overcast.store.engine import Tx

__all__ = ["EventType", "payload", "record"]

EventType = Literal["server.exit", "server.revive"]


async def record(
    tx: Tx,
    *,
    type: EventType,
    user: str,
    server: str,
    reason: str,
    at: float,
    info: Mapping[str, Any],
    callback: str | None,
) -> rows.Event:
    """Append an event inside ``tx``; its delivery to ``callback`` (if
    any) becomes due when ``tx`` commits."""
    return await rows.append_event(
        tx,
        type=type,
        user=user,
        server=server,
        reason=reason,
        at=at,
        body=info,
        callback=callback,
    )


def payload(event: rows.Event) -> bytes:
    """The JSON body of a callback: the same bytes on every retry, since
    they are what the signature covers."""
    document = {
        "id": event.uuid,
        "type": event.type,
        "seq": event.seq,
        "reason": event.reason,
        "time": event.at,
        "user": event.user,
        "server": dict(event.body),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
