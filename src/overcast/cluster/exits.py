"""How a manager hears that a guest ended: one report, two ways in.

A remote host is a one-machine cloud of its own: the manager creates each
guest there with ``callback:exit`` pointing back at the manager's
privileged ``/hosts/exits``, so the host's outbox delivers every end to the
manager, signed, retried and at least once, like any user's callback. The
all-in-one cloud's own host reports in-process. Both arrive here as an
:class:`ExitReport` and go through :meth:`ServerService.host_exited
<overcast.cluster.servers.ServerService.host_exited>`, which is idempotent
(at-least-once delivery repeats reports).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from overcast.host.agent import FENCED, GuestEnd
from overcast.model.errors import UsageError
from overcast.model.keys import parse_uuid

__all__ = ["FENCED", "ExitReport", "report_of_callback", "report_of_end"]


@dataclass(frozen=True)
class ExitReport:
    """A guest's end as a host tells it."""

    server: str
    reason: str
    at: float
    #: The start of the run that ended (the host's info ``started``), when
    #: known: a late report of an earlier run must not end a later one.
    started: float | None = None
    #: The host's event id, for the log.
    event: str | None = None
    #: The reporting host's id (None: this process's own host): a report by
    #: a host that no longer holds the server is about a run it lost.
    host: str | None = None


def report_of_end(end: GuestEnd, host: str | None = None) -> ExitReport:
    """An end seen first-hand on ``host`` (this machine's agent, or a
    manager's ``stop`` on a remote host): it is the current run's."""
    return ExitReport(end.server, end.reason, end.at, host=host)


def report_of_callback(body: bytes, host: str | None = None) -> ExitReport:
    """A host's ``server.exit`` callback body (see
    :func:`overcast.events.outbox.payload`), sent by ``host``;
    :class:`UsageError` if it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UsageError("an exit report is a JSON server.exit event") from None
    if not isinstance(document, dict) or document.get("type") != "server.exit":
        raise UsageError("an exit report is a JSON server.exit event")
    info = document.get("server")
    at = document.get("time")
    reason = document.get("reason")
    if not isinstance(info, dict) or not isinstance(info.get("server"), str):
        raise UsageError("exit report: server: the server's info is required")
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise UsageError("exit report: time: epoch seconds are required")
    if not isinstance(reason, str) or not 0 < len(reason) <= 64:
        raise UsageError("exit report: reason: a short text is required")
    started = info.get("started")
    try:
        started_at = float(started) if started is not None else None
    except (TypeError, ValueError):
        raise UsageError("exit report: started: epoch seconds") from None
    event = document.get("id")
    return ExitReport(
        server=parse_uuid("server", info["server"]),
        reason=reason,
        at=float(at),
        started=started_at,
        event=event if isinstance(event, str) else None,
        host=host,
    )
