"""``/billing/…`` (admins): the usage ledger, raw and summed.

``/billing/list`` gives the ledger's records and ``/billing/report`` their
totals per object, both over ``from``..``to`` (epoch seconds or ISO 8601;
default: the last 24 hours) and optionally for one ``user``.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin
from overcast.api.context import READ, cloud_of
from overcast.api.negotiate import reply
from overcast.events.ledger import UsageTotal, totals
from overcast.model.codec import Record
from overcast.model.errors import UsageError
from overcast.model.keys import parse_time, parse_uuid
from overcast.store import usage as usage_rows

__all__ = ["routes", "total_record", "usage_record"]


def usage_record(record: usage_rows.Usage) -> Record:
    out: dict[str, str | int] = {
        "id": record.id,
        "user": record.user,
        "kind": record.kind,
        "object": record.object,
        "start": f"{record.start:.3f}",
        "end": f"{record.end:.3f}",
        "seconds": f"{record.seconds:.3f}",
        "reason": record.reason,
    }
    if record.cpu is not None:
        out["cpu"] = record.cpu
    if record.mem is not None:
        out["mem"] = record.mem
    if record.bytes is not None:
        out["bytes"] = record.bytes
    return out


def total_record(total: UsageTotal) -> Record:
    return {
        "user": total.user,
        "kind": total.kind,
        "object": total.object,
        "seconds": f"{total.seconds:.3f}",
        "cpu:mhz:seconds": f"{total.cpu_mhz_seconds:.0f}",
        "mem:mib:seconds": f"{total.mem_mib_seconds:.0f}",
        "gib:seconds": f"{total.gib_seconds:.3f}",
        "records": total.records,
    }


async def _window(request: Request) -> tuple[float, float, list[usage_rows.Usage]]:
    await admin(request)
    params = request.query_params
    end = parse_time("to", params["to"]) if "to" in params else time.time()
    start = parse_time("from", params["from"]) if "from" in params else end - 86400
    if start > end:
        raise UsageError("from: must not be after to")
    user = parse_uuid("user", params["user"]) if "user" in params else None
    async with cloud_of(request).store.read(big=True) as tx:
        records = await usage_rows.usage_between(tx, user, start, end)
    return start, end, records


async def list_(request: Request) -> Response:
    _start, _end, records = await _window(request)
    return reply(request, [usage_record(r) for r in records])


async def report(request: Request) -> Response:
    start, end, records = await _window(request)
    return reply(request, [total_record(t) for t in totals(records, start, end)])


routes = [
    Route("/billing/list", list_, methods=READ),
    Route("/billing/report", report, methods=READ),
]
