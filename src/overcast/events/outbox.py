"""What a callback carries.

Events are appended by the caller's own write transaction (the one that
stops or deletes the server, through
:func:`overcast.store.events.append_event`), never by a second one: a crash
between the two would lose the event or invent it. Delivery reads them back
later (:mod:`overcast.events.delivery`), as many times as it takes.
"""

from __future__ import annotations

import json
from typing import Literal

from overcast.store import events as rows

__all__ = ["EventType", "payload"]

EventType = Literal["server.exit", "server.revive"]


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
