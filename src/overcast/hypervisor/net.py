"""Host side of guest networking: Linux bridges and tap devices, through ``ip``.

Each verb is idempotent (ensuring what already exists succeeds; removing
what is gone succeeds), so a restarted host agent can simply ensure its
networks again. Taps are created persistent, attached to their bridge and
set up before QEMU opens them by name (``-netdev tap,ifname=...``); QEMU
never runs scripts. Every verb takes an optional network namespace
(``ip -n``), which is how tests keep their bridges off the host.

Not here: which bridge a VLAN uses, DHCP and anti-spoofing (the host layer).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

from overcast.model.errors import FailedError, UsageError

__all__ = [
    "IP_TIMEOUT",
    "Link",
    "check_ifname",
    "ensure_bridge",
    "ensure_tap",
    "link",
    "remove_link",
    "tap_counters",
]

#: Seconds an ``ip`` command may take.
IP_TIMEOUT = 10.0
#: Linux interface names: at most 15 bytes; no slash, colon, comma or space.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def check_ifname(name: str) -> str:
    """``name`` if it is a valid interface name, else :class:`UsageError`."""
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"{name!r} is not a valid network interface name")
    return name


@dataclass(frozen=True)
class Link:
    """What ``ip`` says about one interface. ``kind`` is ``bridge``, ``tun``, ..."""

    name: str
    kind: str
    master: str | None
    up: bool


async def _ip(*args: str, netns: str | None = None) -> tuple[int, str, str]:
    prefix = ["-n", netns] if netns is not None else []
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            *prefix,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as missing:
        raise FailedError("ip (iproute2) is not installed") from missing
    try:
        async with asyncio.timeout(IP_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError as slow:
        raise FailedError(f"ip {' '.join(args)} took over {IP_TIMEOUT} s") from slow
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace").strip()


async def _ip_ok(*args: str, netns: str | None = None) -> None:
    status, _, err = await _ip(*args, netns=netns)
    if status != 0:
        raise FailedError(f"ip {' '.join(args)} failed: {err}")


async def link(name: str, *, netns: str | None = None) -> Link | None:
    """The interface ``name``, or None if there is none."""
    check_ifname(name)
    status, out, err = await _ip("-j", "-d", "link", "show", "dev", name, netns=netns)
    if status != 0:
        if "does not exist" in err:
            return None
        raise FailedError(f"ip link show {name} failed: {err}")
    data = json.loads(out)[0]
    return Link(
        name=data["ifname"],
        kind=str(data.get("linkinfo", {}).get("info_kind", "")),
        master=data.get("master"),
        up="UP" in data.get("flags", []),
    )


async def ensure_bridge(name: str, *, netns: str | None = None) -> None:
    """A bridge ``name`` exists and is up."""
    current = await link(name, netns=netns)
    if current is None:
        status, _, err = await _ip("link", "add", "name", name, "type", "bridge", netns=netns)
        if status != 0 and "exists" not in err:  # a racing ensure made it first
            raise FailedError(f"cannot create bridge {name}: {err}")
        current = await link(name, netns=netns)
    if current is None or current.kind != "bridge":
        raise FailedError(f"{name} exists but is not a bridge")
    if not current.up:
        await _ip_ok("link", "set", "dev", name, "up", netns=netns)


async def ensure_tap(name: str, *, bridge: str | None = None, netns: str | None = None) -> None:
    """A persistent tap ``name`` exists, is up, and is a port of ``bridge`` if given."""
    current = await link(name, netns=netns)
    if current is None:
        status, _, err = await _ip("tuntap", "add", "dev", name, "mode", "tap", netns=netns)
        if status != 0 and "busy" not in err.lower() and "exists" not in err:
            raise FailedError(f"cannot create tap {name}: {err}")
        current = await link(name, netns=netns)
    if current is None or current.kind != "tun":
        raise FailedError(f"{name} exists but is not a tap")
    if bridge is not None and current.master != bridge:
        check_ifname(bridge)
        await _ip_ok("link", "set", "dev", name, "master", bridge, netns=netns)
    if not current.up:
        await _ip_ok("link", "set", "dev", name, "up", netns=netns)


async def remove_link(name: str, *, netns: str | None = None) -> None:
    """No interface ``name`` exists (a tap or a bridge; a bridge's ports are released)."""
    check_ifname(name)
    status, _, err = await _ip("link", "del", "dev", name, netns=netns)
    if status != 0 and "does not exist" not in err and "Cannot find device" not in err:
        raise FailedError(f"cannot remove {name}: {err}")


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
