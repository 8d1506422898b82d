"""The one configuration: defaults, then ``overcast.toml``, then ``OVERCAST_*``
environment variables, then command-line options (each overriding the last).

``overcast.toml`` is read from the data directory (or ``OVERCAST_CONFIG``)::

    listen = "127.0.0.1:8080"
    store = "postgresql://overcast@db/overcast"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "load_settings", "parse_listen"]


@dataclass(frozen=True)
class Settings:
    data: Path
    listen: str
    store: str

    @property
    def drives_dir(self) -> Path:
        return self.data / "drives"

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
    data: Path | None = None, listen: str | None = None, store: str | None = None
) -> Settings:
    data_dir = (data or Path(os.environ.get("OVERCAST_DATA", "./var"))).resolve()
    file = Path(os.environ.get("OVERCAST_CONFIG", data_dir / "overcast.toml"))
    values: dict[str, str] = {}
    if file.is_file():
        with open(file, "rb") as f:
            values = {k: str(v) for k, v in tomllib.load(f).items()}
    for key in ("listen", "store"):
        if env := os.environ.get(f"OVERCAST_{key.upper()}"):
            values[key] = env
    settings = Settings(
        data=data_dir,
        listen=listen or values.get("listen", "127.0.0.1:8080"),
        store=store or values.get("store", f"sqlite:///{data_dir / 'overcast.db'}"),
    )
    parse_listen(settings.listen)
    return settings
