"""The one configuration: defaults, then ``overcast.toml``, then ``OVERCAST_*``
environment variables, then command-line options (each overriding the last).

``overcast.toml`` is read from the data directory (or ``OVERCAST_CONFIG``)::

    listen = "127.0.0.1:8080"
    store = "postgresql://overcast@db/overcast"
    callback_private = false    # allow callbacks to loopback/private addresses
    billing_interval = 3600     # seconds between "exists" usage records
    callback_timeout = 10       # seconds one callback request may take
    callback_retry = 5          # seconds before the first retry (then doubling)
    etcd = "http://10.0.0.1:2379,http://10.0.0.2:2379"   # many hosts: hold a lease
    host_id = "rack1-host4"     # this host's name in etcd [the machine's hostname]
    lease_ttl = 5               # seconds; guests are fenced before it ends
    drives = "/srv/shared/drives"   # drive images, shared by every host [DATA/drives]
    advertise = "http://10.0.0.5:8080"  # how other machines reach this one [http://LISTEN]
    local_host = true           # run guests on this machine (a manager of hosts may not)
    manager = "http://U:K@10.0.0.1:8080"  # a host agent: register with this manager,
                                # whose admin credentials (U:K) it accepts as its own
    failover_margin = 1.0       # seconds a manager waits after a lease ends (clock drift)
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from overcast.model.errors import UsageError
from overcast.model.keys import parse_bool

__all__ = ["Settings", "load_settings", "parse_listen"]


@dataclass(frozen=True)
class Settings:
    data: Path
    listen: str
    store: str
    #: Users' callbacks may go to loopback, link-local and private addresses.
    callback_private: bool = False
    billing_interval: float = 3600.0
    callback_timeout: float = 10.0
    callback_retry: float = 5.0
    #: etcd endpoints: when given, this host holds a lease in etcd and
    #: fences itself (kills its guests) when it cannot keep it.
    etcd: tuple[str, ...] = ()
    host_id: str = ""
    lease_ttl: int = 5
    #: Where drive images live; every host of a cloud must see the same files.
    drives: Path | None = None
    #: This process's URL as hosts and managers reach it (http://LISTEN by default).
    advertise: str = ""
    #: Whether this process runs guests itself (a manager of remote hosts may not).
    local_host: bool = True
    #: A host agent's manager (credentials in the URL): registered with at start.
    manager: str = ""
    #: How long a manager waits after a host's lease ended before reviving its guests.
    failover_margin: float = 1.0

    @property
    def drives_dir(self) -> Path:
        return self.drives if self.drives is not None else self.data / "drives"

    @property
    def url(self) -> str:
        """This process's advertised URL, without a trailing slash."""
        return (self.advertise or f"http://{self.listen}").rstrip("/")

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_settings(
    data: Path | None = None,
    listen: str | None = None,
    store: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """``overrides``: settings given on the command line (they win)."""
    data_dir = (data or Path(os.environ.get("OVERCAST_DATA", "./var"))).resolve()
    file = Path(os.environ.get("OVERCAST_CONFIG", data_dir / "overcast.toml"))
    values: dict[str, str] = {}
    if file.is_file():
        with open(file, "rb") as f:
            values = {k: str(v) for k, v in tomllib.load(f).items()}
    for key in _KEYS:
        if env := os.environ.get(f"OVERCAST_{key.upper()}"):
            values[key] = env
    values.update(overrides or {})
    unknown = values.keys() - _KEYS
    if unknown:
        raise ValueError(f"{file}: unknown setting(s) {', '.join(sorted(unknown))}")
    settings = Settings(
        data=data_dir,
        listen=listen or values.get("listen", "127.0.0.1:8080"),
        store=store or values.get("store", f"sqlite:///{data_dir / 'overcast.db'}"),
        callback_private=_bool("callback_private", values.get("callback_private", "false")),
        billing_interval=_seconds("billing_interval", values.get("billing_interval", "3600")),
        callback_timeout=_seconds("callback_timeout", values.get("callback_timeout", "10")),
        callback_retry=_seconds("callback_retry", values.get("callback_retry", "5")),
        etcd=tuple(u.strip() for u in values.get("etcd", "").split(",") if u.strip()),
        host_id=values.get("host_id", "") or socket.gethostname(),
        lease_ttl=_ttl(values.get("lease_ttl", "5")),
        drives=Path(values["drives"]).resolve() if values.get("drives") else None,
        advertise=values.get("advertise", ""),
        local_host=_bool("local_host", values.get("local_host", "true")),
        manager=values.get("manager", "").rstrip("/"),
        failover_margin=_seconds("failover_margin", values.get("failover_margin", "1")),
    )
    parse_listen(settings.listen)
    return settings


_KEYS = frozenset(
    {
        "listen",
        "store",
        "callback_private",
        "billing_interval",
        "callback_timeout",
        "callback_retry",
        "etcd",
        "host_id",
        "lease_ttl",
        "drives",
        "advertise",
        "local_host",
        "manager",
        "failover_margin",
    }
)


def _bool(key: str, value: str) -> bool:
    try:
        return parse_bool(f"setting {key}", value)
    except UsageError as err:
        raise ValueError(err.message) from None


def _ttl(value: str) -> int:
    """Whole seconds (etcd's unit), at least 2: a renewal every third of it."""
    seconds = _seconds("lease_ttl", value)
    if seconds != int(seconds) or seconds < 2:
        raise ValueError("setting lease_ttl: whole seconds, at least 2")
    return int(seconds)


def _seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"setting {key}: {value!r} is not a number of seconds") from None
    if not 0 < seconds < 1e9:
        raise ValueError(f"setting {key}: must be positive")
    return seconds
