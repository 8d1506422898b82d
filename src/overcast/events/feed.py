"""The event feed: ``/events/list?since=CURSOR&wait=SECONDS``.

A reader asks for the events after its cursor (an event's ``id``); with
``wait`` an empty answer is held back until an event arrives or the wait
ends (long-poll). Events committed by this process wake waiting readers at
once (:meth:`EventFeed.notify`); those committed by another process on the
same store (several managers on PostgreSQL) are seen by re-reading every
``poll`` seconds.

A cursor must never skip an event, so ids must become visible in id order.
SQLite commits one writer at a time, which gives that; on PostgreSQL the
outbox's append takes a transaction-scoped advisory lock first
(:func:`overcast.store.events.append_event`), so transactions that append
events commit in the order of their ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from overcast.store import events as rows
from overcast.store.engine import Store

__all__ = ["MAX_WAIT", "EventFeed"]

#: The longest a reader is held (s): longer would outlast proxies' timeouts.
MAX_WAIT = 60.0
#: The most events one answer carries; the reader continues from the last.
MAX_EVENTS = 1000


class EventFeed:
    def __init__(self, store: Store, *, poll: float = 1.0) -> None:
        self._store = store
        self._poll = poll
        self._changed = asyncio.Condition()
        # Counts notifications, so that one arriving between a reader's
        # query and its wait is not missed.
        self._generation = 0

    async def notify(self) -> None:
        """An event was committed: wake the readers."""
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _moved(self, seen: int) -> bool:
        return self._generation != seen

    async def read(
        self, user: str | None, since: int, wait: float = 0.0, limit: int = MAX_EVENTS
    ) -> list[rows.Event]:
        """The events after ``since`` (one user's, or every user's for None),
        waiting up to ``wait`` seconds for the first one."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            seen = self._generation
            async with self._store.read() as tx:
                found = await rows.events_after(tx, user, since, limit)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self._poll)), self._changed:
                    await self._changed.wait_for(functools.partial(self._moved, seen))
