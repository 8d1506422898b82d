"""``/events/list``: the feed of exit and revive events, with long-poll."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import caller
from overcast.api.context import READ, cloud_of
from overcast.api.negotiate import reply
from overcast.events.feed import MAX_WAIT
from overcast.model.codec import Record
from overcast.model.errors import UsageError
from overcast.model.keys import parse_int
from overcast.store.events import Event

__all__ = ["event_record", "routes"]

#: The cursor of the newest event in a reply (or the one given, when none
#: came), for the client's next ``since``.
CURSOR_HEADER = "X-Events-Cursor"


def event_record(event: Event) -> Record:
    """An event as a record: what its callback carries, with the server's
    info under ``info:`` and the feed's ``cursor``."""
    record: dict[str, str | int] = {
        "event": event.uuid,
        "cursor": event.id,
        "type": event.type,
        "seq": event.seq,
        "reason": event.reason,
        "time": f"{event.at:.3f}",
        "user": event.user,
        "server": event.server,
    }
    for key, value in event.body.items():
        record[f"info:{key}"] = value if isinstance(value, int) else str(value)
    return record


def _wait(text: str) -> float:
    try:
        wait = float(text)
    except ValueError:
        raise UsageError(f"wait: {text[:60]!r} is not a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT:
        raise UsageError(f"wait: must be from 0 to {MAX_WAIT:g} seconds")
    return wait


async def list_(request: Request) -> Response:
    """Admins see every user's events; others their own."""
    user = await caller(request)
    params = request.query_params
    since = parse_int("since", params.get("since", "0"), 0, 2**62)
    wait = _wait(params.get("wait", "0"))
    events = await cloud_of(request).feed.read(None if user.admin else user.uuid, since, wait)
    response = reply(request, [event_record(e) for e in events])
    response.headers[CURSOR_HEADER] = str(events[-1].id if events else since)
    return response


routes = [Route("/events/list", list_, methods=READ)]
