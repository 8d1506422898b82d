"""The billing ledger: periodic "exists" records, and reports over them.

Ends are billed by the transaction that ends the server (the cluster calls
:func:`overcast.store.usage.bill_server` there), drives when they are
resized or destroyed. What this adds is the tick: every ``interval``
seconds each running server and each drive gets a record up to now, so an
end that is late (a host that reports hours later) or never comes (a lost
host, until its guests are revived) still leaves its usage in the ledger
up to the last tick, and a report for a past hour is final once the tick
after it has run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from overcast.store import usage as rows
from overcast.store.engine import Store

__all__ = ["DEFAULT_INTERVAL", "Ledger", "UsageTotal", "tick", "totals"]

log = logging.getLogger(__name__)

#: Seconds between "exists" records.
DEFAULT_INTERVAL = 3600.0
_GIB = float(1 << 30)


async def tick(store: Store, at: float | None = None) -> tuple[int, int]:
    """Record every running server's and every drive's use up to ``at``
    (now) in one transaction; returns how many of each were recorded."""
    until = time.time() if at is None else at
    async with store.write() as tx:
        servers = await rows.bill_servers(tx, until, "exists")
        drives = await rows.bill_drives(tx, until, "exists")
    return servers, drives


class Ledger:
    """Runs :func:`tick` every ``interval`` seconds until stopped."""

    def __init__(self, store: Store, interval: float = DEFAULT_INTERVAL) -> None:
        self._store = store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="overcast-ledger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                servers, drives = await tick(self._store)
                log.debug("ledger: %d servers and %d drives recorded", servers, drives)
            except Exception:
                # A store outage delays the records; the next tick covers
                # the whole time since the last one.
                log.exception("recording usage failed; retrying at the next tick")


@dataclass
class UsageTotal:
    """One object's use over a report's window."""

    user: str
    kind: str
    object: str
    seconds: float = 0.0
    #: MHz times seconds and MiB times seconds (servers).
    cpu_mhz_seconds: float = 0.0
    mem_mib_seconds: float = 0.0
    #: GiB times seconds (drives).
    gib_seconds: float = 0.0
    records: int = 0


def totals(records: Iterable[rows.Usage], start: float, end: float) -> list[UsageTotal]:
    """Sum records per object over [start, end); a record that straddles an
    edge counts for its part inside (use is taken as even over a record)."""
    found: dict[tuple[str, str], UsageTotal] = {}
    for record in records:
        inside = min(record.end, end) - max(record.start, start)
        if inside <= 0:
            continue
        total = found.setdefault(
            (record.kind, record.object), UsageTotal(record.user, record.kind, record.object)
        )
        total.seconds += inside
        total.records += 1
        if record.cpu is not None:
            total.cpu_mhz_seconds += record.cpu * inside
        if record.mem is not None:
            total.mem_mib_seconds += record.mem * inside
        if record.bytes is not None:
            total.gib_seconds += record.bytes / _GIB * inside
    return sorted(found.values(), key=lambda t: (t.user, t.kind, t.object))
