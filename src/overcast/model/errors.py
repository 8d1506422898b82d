"""The error kinds a user can cause, each with a category.

Every failure that reaches a user is an :class:`OvercastError`. Its
:class:`Kind` is the category (Ganeti-style: invalid, not found, busy, ...)
that the API maps, in exactly one table (``overcast.api.errors``), onto an
HTTP status and an ``X-Elastic-Error`` value. Lower layers raise these; they
never know about HTTP.

Tree::

    OvercastError
     ├─ UsageError      bad key, value, path or range
     ├─ AuthError       credentials missing or wrong
     ├─ QuotaError      over the user's quota
     ├─ MissingError    no such object *for this user*
     ├─ MethodError     GET on a state-changing call
     ├─ BusyError       claimed, imaging, wrong state
     ├─ FailedError     the operation failed (hypervisor refused, I/O error)
     ├─ FullError       no room (hosts or disk)
     └─ SystemFault     a bug; logged with the request id
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "AuthError",
    "BusyError",
    "FailedError",
    "FullError",
    "HostSilent",
    "HostUnreachable",
    "Kind",
    "MethodError",
    "MissingError",
    "OvercastError",
    "QuotaError",
    "SystemFault",
    "UsageError",
]


class Kind(enum.Enum):
    """Categories of failure; the value is the ElasticHosts error name."""

    USAGE = "usage"
    AUTH = "auth"
    BILLING = "billing"
    MISSING = "missing"
    METHOD = "method"
    BUSY = "busy"
    FAILED = "failed"
    SYSTEM = "system"
    FULL = "full"


class OvercastError(Exception):
    """Root of every error a user can see; the message is one human line."""

    kind: ClassVar[Kind] = Kind.SYSTEM

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(OvercastError):
    kind = Kind.USAGE


class AuthError(OvercastError):
    kind = Kind.AUTH


class QuotaError(OvercastError):
    kind = Kind.BILLING


class MissingError(OvercastError):
    kind = Kind.MISSING


class MethodError(OvercastError):
    kind = Kind.METHOD


class BusyError(OvercastError):
    kind = Kind.BUSY


class FailedError(OvercastError):
    kind = Kind.FAILED


class HostUnreachable(FailedError):
    """A host could not be reached at all: nothing was asked of it, so the
    same request may go to another host."""


class HostSilent(FailedError):
    """A request to a host went out but its answer never came: it may have
    been carried out there. Retry it on that same host, not elsewhere."""


class FullError(OvercastError):
    kind = Kind.FULL


class SystemFault(OvercastError):
    kind = Kind.SYSTEM
