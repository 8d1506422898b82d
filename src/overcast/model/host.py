"""Hosts as the manager registers them (issue 7): id, where its agent
answers, what it offers guests, and whether it takes new ones.

``local`` is the all-in-one cloud's own machine, registered by the cloud
itself with no URL (it is reached in-process).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from overcast.model.codec import Keys, Record
from overcast.model.errors import UsageError
from overcast.model.keys import parse_bool, parse_int, parse_name

__all__ = [
    "LOCAL",
    "Host",
    "HostSpec",
    "host_info",
    "parse_host_changes",
    "parse_host_spec",
    "without_credentials",
]

#: The id of the machine the manager itself runs on.
LOCAL = "local"
_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
#: 1 PiB of memory, 100 THz of cpu: well past any machine.
_MAX_MEM = 1 << 30
_MAX_CPU = 10**8


@dataclass(frozen=True)
class Host:
    id: str
    name: str
    url: str | None
    cpu: int  # MHz
    mem: int  # MiB
    draining: bool = False


@dataclass(frozen=True)
class HostSpec:
    name: str
    url: str
    cpu: int
    mem: int
    #: The host's own id (its etcd id), if it gave one.
    id: str | None = None


_KNOWN = {"id", "name", "url", "cpu", "mem", "drain"}
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def _url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not _URL.fullmatch(url):
        raise UsageError(f"url: {value[:80]!r} is not an http:// or https:// URL of a host agent")
    return url


def _unknown(keys: Keys, allowed: set[str]) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise UsageError(f"{extra[0]}: not a host key (known: {', '.join(sorted(allowed))})")


def parse_host_spec(keys: Keys) -> HostSpec:
    """``url``, ``cpu`` (MHz) and ``mem`` (MiB) are required; ``name`` defaults
    to the URL; ``id`` (what a host agent registering itself gives: its id
    in etcd) to a new UUID."""
    _unknown(keys, _KNOWN - {"drain"})
    for key in ("url", "cpu", "mem"):
        if key not in keys:
            raise UsageError(f"{key}: required")
    url = _url(keys["url"])
    host_id = keys["id"].strip().lower() if "id" in keys else None
    if host_id is not None and (not _ID.fullmatch(host_id) or host_id == LOCAL):
        raise UsageError(f"id: {keys['id'][:64]!r} is not a host id (a-z, 0-9, . _ -; not local)")
    return HostSpec(
        name=parse_name("name", keys.get("name", url)),
        url=url,
        cpu=parse_int("cpu", keys["cpu"], 1, _MAX_CPU),
        mem=parse_int("mem", keys["mem"], 1, _MAX_MEM),
        id=host_id,
    )


def parse_host_changes(keys: Keys, host: Host) -> Host:
    """A host with ``name``, ``cpu``, ``mem`` or ``drain`` changed."""
    _unknown(keys, _KNOWN - {"url", "id"})
    return Host(
        id=host.id,
        name=parse_name("name", keys["name"]) if "name" in keys else host.name,
        url=host.url,
        cpu=parse_int("cpu", keys["cpu"], 1, _MAX_CPU) if "cpu" in keys else host.cpu,
        mem=parse_int("mem", keys["mem"], 1, _MAX_MEM) if "mem" in keys else host.mem,
        draining=parse_bool("drain", keys["drain"]) if "drain" in keys else host.draining,
    )


def host_info(host: Host, used_cpu: int, used_mem: int, guests: int) -> Record:
    record: dict[str, str | int] = {
        "host": host.id,
        "name": host.name,
        "status": "draining" if host.draining else "active",
        "cpu": host.cpu,
        "mem": host.mem,
        "used:cpu": used_cpu,
        "used:mem": used_mem,
        "guests": guests,
    }
    if host.url is not None:
        record["url"] = without_credentials(host.url)
    return record


def without_credentials(url: str) -> str:
    """``url`` with no user part: a host's URL holds the credentials the
    manager uses there, never shown (info, logs) nor compared (etcd)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
