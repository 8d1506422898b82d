"""Host side of guest networking: Linux bridges and tap devices, over netlink.

Each verb is idempotent (ensuring what already exists succeeds; removing
what is gone succeeds), so a restarted host agent can simply ensure its
networks again. Taps are created persistent, attached to their bridge and
set up before QEMU opens them by name (``-netdev tap,ifname=...``); QEMU
never runs scripts. Every verb takes an optional network namespace, which
is how tests keep their bridges off the host.

The verbs speak netlink in-process (pyroute2) rather than running ``ip``:
a fork and exec per step cost a create several milliseconds each, on the
path that the synchronous create waits for. Netlink calls take
microseconds.

Not here: which bridge a VLAN uses, DHCP and anti-spoofing (the host layer).
"""

from __future__ import annotations

import errno
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError

from overcast.model.errors import FailedError, UsageError

__all__ = [
    "Link",
    "check_ifname",
    "ensure_bridge",
    "ensure_tap",
    "link",
    "remove_link",
    "tap_counters",
]

#: Linux interface names: at most 15 bytes; no slash, colon, comma or space.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_IFF_UP = 1


def check_ifname(name: str) -> str:
    """``name`` if it is a valid interface name, else :class:`UsageError`."""
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"{name!r} is not a valid network interface name")
    return name


@dataclass(frozen=True)
class Link:
    """One interface as the kernel reports it. ``kind`` is ``bridge``, ``tun``, ..."""

    name: str
    kind: str
    master: str | None
    up: bool


@asynccontextmanager
async def _netlink(netns: str | None) -> AsyncIterator[Any]:
    try:
        async with AsyncIPRoute(netns=netns) as ipr:
            yield ipr
    except NetlinkError as err:
        raise FailedError(f"netlink: {err}") from err


async def _index(ipr: Any, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=check_ifname(name))
    return int(found[0]) if found else None


async def _link(ipr: Any, name: str) -> tuple[int, Link] | None:
    index = await _index(ipr, name)
    if index is None:
        return None
    try:
        msg = (await ipr.link("get", index=index))[0]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise
    master_index = msg.get("IFLA_MASTER")
    master = None
    if master_index:
        master = (await ipr.link("get", index=master_index))[0].get("IFLA_IFNAME")
    return index, Link(
        name=str(msg.get("IFLA_IFNAME")),
        kind=str(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""),
        master=master,
        up=bool(msg["flags"] & _IFF_UP),
    )


async def _add(ipr: Any, name: str, **kind: str) -> None:
    try:
        await ipr.link("add", ifname=name, **kind)
    except NetlinkError as err:
        if err.code not in (errno.EEXIST, errno.EBUSY):  # a racing ensure made it first
            raise FailedError(f"cannot create {kind['kind']} {name}: {err}") from err


async def link(name: str, *, netns: str | None = None) -> Link | None:
    """The interface ``name``, or None if there is none."""
    async with _netlink(netns) as ipr:
        found = await _link(ipr, name)
    return found[1] if found else None


async def ensure_bridge(name: str, *, netns: str | None = None) -> None:
    """A bridge ``name`` exists and is up."""
    async with _netlink(netns) as ipr:
        found = await _link(ipr, name)
        if found is None:
            await _add(ipr, check_ifname(name), kind="bridge")
            found = await _link(ipr, name)
        if found is None or found[1].kind != "bridge":
            raise FailedError(f"{name} exists but is not a bridge")
        if not found[1].up:
            await ipr.link("set", index=found[0], state="up")


async def ensure_tap(name: str, *, bridge: str | None = None, netns: str | None = None) -> None:
    """A persistent tap ``name`` exists, is up, and is a port of ``bridge`` if given."""
    async with _netlink(netns) as ipr:
        found = await _link(ipr, name)
        if found is None:
            await _add(ipr, check_ifname(name), kind="tuntap", mode="tap")
            found = await _link(ipr, name)
        if found is None or found[1].kind != "tun":
            raise FailedError(f"{name} exists but is not a tap")
        index, current = found
        if bridge is not None and current.master != bridge:
            master = await _index(ipr, bridge)
            if master is None:
                raise FailedError(f"cannot attach {name}: no bridge {bridge}")
            await ipr.link("set", index=index, master=master)
        if not current.up:
            await ipr.link("set", index=index, state="up")


async def remove_link(name: str, *, netns: str | None = None) -> None:
    """No interface ``name`` exists (a tap or a bridge; a bridge's ports are released)."""
    async with _netlink(netns) as ipr:
        index = await _index(ipr, name)
        if index is None:
            return
        try:
            await ipr.link("del", index=index)
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                raise FailedError(f"cannot remove {name}: {err}") from err


def tap_counters(name: str) -> dict[str, int] | None:
    """``rx_bytes``, ``tx_bytes``, ``rx_packets``, ``tx_packets`` of an interface
    in this network namespace, as the host sees them; None if it is not here."""
    stats = Path("/sys/class/net") / check_ifname(name) / "statistics"
    try:
        return {
            key: int((stats / key).read_text())
            for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        }
    except (OSError, ValueError):
        return None
