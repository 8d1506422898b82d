"""Servers: the configuration keys of API.md, validated into a spec.

Parsing is pure; whether a drive, IP or VLAN exists and belongs to the
caller is the create path's business (it needs the store). This module
answers only "is this a well-formed server configuration".
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from overcast.model.codec import Keys, Record
from overcast.model.drive import Media
from overcast.model.errors import UsageError
from overcast.model.keys import (
    parse_bool,
    parse_int,
    parse_name,
    parse_tags,
    parse_uuid,
    parse_uuid_list,
    user_meta,
)

__all__ = [
    "MHZ_PER_CORE",
    "Bus",
    "DeviceSpec",
    "Nic",
    "NicModel",
    "NicSpec",
    "Server",
    "ServerSpec",
    "ServerStatus",
    "new_mac",
    "parse_device_name",
    "parse_server_spec",
    "server_info",
]

#: ``smp auto`` gives one vCPU per this much ``cpu``.
MHZ_PER_CORE = 2000
CPU_RANGE = (100, 128_000)
MEM_RANGE = (32, 262_144)
SMP_RANGE = (1, 64)
MAX_NICS = 8


class Bus(enum.Enum):
    IDE = "ide"
    SCSI = "scsi"
    VIRTIO = "block"


class NicModel(enum.Enum):
    E1000 = "e1000"
    RTL8139 = "rtl8139"
    VIRTIO = "virtio"


@dataclass(frozen=True)
class DeviceSpec:
    """A drive on a device slot, e.g. ``ide:0:1``."""

    name: str
    bus: Bus
    index: int
    unit: int
    drive: str
    media: Media = Media.DISK


@dataclass(frozen=True)
class NicSpec:
    index: int
    model: NicModel
    mac: str | None = None
    vlan: str | None = None
    dhcp: str | None = None  # an address, "auto", or None


@dataclass(frozen=True)
class ServerSpec:
    name: str
    cpu: int
    mem: int
    smp: int
    persistent: bool = False
    devices: tuple[DeviceSpec, ...] = ()
    boot: tuple[str, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    vnc: str | None = None  # "auto" or an address; None: no VNC
    vnc_password: str | None = None
    vnc_tls: bool = False
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    avoid_drives: tuple[str, ...] = ()
    avoid_servers: tuple[str, ...] = ()
    callback_exit: str | None = None
    host: str | None = None
    #: Privileged (a manager creating on its host): the drives to open
    #: shareable, whose claims the manager holds and the host cannot see.
    shared: tuple[str, ...] = ()


_DEVICE = re.compile(r"(ide):([01]):([01])|(scsi):(0):([0-7])|(block):([0-7])")
_NIC = re.compile(r"nic:([0-9]):(model|mac|vlan|dhcp)")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_SIMPLE = frozenset(
    {
        "name",
        "cpu",
        "mem",
        "smp",
        "persistent",
        "boot",
        "vnc",
        "vnc:ip",
        "vnc:password",
        "password",
        "vnc:tls",
        "tags",
        "avoid:drives",
        "avoid:servers",
        "callback:exit",
        "host",
        "shared",
    }
)
#: What info shows and a client may echo back; ignored on input.
READ_ONLY = frozenset({"server", "user", "status", "started", "vnc:port", "rx", "tx"})
_STATS = re.compile(r".+:(read|write):(bytes|requests)|rx:packets|tx:packets|nic:[0-9]:dhcp:ip")


def new_mac() -> str:
    """A random locally administered unicast MAC in QEMU's 52:54:00 range."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _device(key: str) -> tuple[Bus, int, int] | None:
    m = _DEVICE.fullmatch(key)
    if not m:
        return None
    if m.group(1):
        return Bus.IDE, int(m.group(2)), int(m.group(3))
    if m.group(4):
        return Bus.SCSI, 0, int(m.group(6))
    return Bus.VIRTIO, int(m.group(8)), 0


def parse_device_name(name: str) -> tuple[Bus, int, int]:
    """(bus, index, unit) of a device name: ``ide:B:U``, ``scsi:0:U`` or
    ``block:N`` (``N`` is the index); :class:`UsageError` for anything else."""
    slot = _device(name.strip())
    if slot is None:
        raise UsageError(
            f"{name[:40]!r} is not a device: use ide:B:U (B, U 0-1), scsi:0:U (U 0-7) "
            "or block:N (N 0-7)"
        )
    return slot


def _mac(key: str, value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(mac):
        raise UsageError(f"{key}: {value[:40]!r} is not a MAC address")
    if int(mac[:2], 16) & 1:
        raise UsageError(f"{key}: {mac} is a multicast address")
    return mac


def _auto_or_address(key: str, value: str) -> str:
    """``auto`` or an IP address (``nic:N:dhcp``, ``vnc``)."""
    text = value.strip()
    if text == "auto":
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"{key}: {value[:60]!r} is not an IP address or auto") from None


def _callback(value: str) -> str:
    url = value.strip()
    if not re.fullmatch(r"https?://[^\s]{1,2000}", url):
        raise UsageError("callback:exit: must be an http:// or https:// URL")
    return url


def parse_server_spec(keys: Keys) -> ServerSpec:
    """Validate a whole ``/servers/create`` configuration."""
    devices: dict[str, DeviceSpec] = {}
    media: dict[str, Media] = {}
    nic_keys: dict[int, dict[str, str]] = {}
    for key, value in keys.items():
        if key in _SIMPLE or key in READ_ONLY or key.startswith("user:") or _STATS.fullmatch(key):
            continue
        if key.endswith(":media") and _device(key[: -len(":media")]):
            try:
                media[key[: -len(":media")]] = Media(value.strip())
            except ValueError:
                raise UsageError(f"{key}: {value[:20]!r} is not disk or cdrom") from None
            continue
        slot = _device(key)
        if slot is not None:
            devices[key] = DeviceSpec(key, *slot, drive=parse_uuid(key, value))
            continue
        nic = _NIC.fullmatch(key)
        if nic is not None:
            nic_keys.setdefault(int(nic.group(1)), {})[nic.group(2)] = value
            continue
        if re.fullmatch(r"(ide|scsi|block|nic)(:.*)?", key):
            raise UsageError(f"unknown device {key}")
        raise UsageError(f"unknown key {key}")

    for name in media:
        if name not in devices:
            raise UsageError(f"{name}:media given but no drive on {name}")
    devices = {
        n: DeviceSpec(d.name, d.bus, d.index, d.unit, d.drive, media.get(n, Media.DISK))
        for n, d in devices.items()
    }
    seen: dict[str, str] = {}
    for name, device in devices.items():
        if device.drive in seen:
            raise UsageError(f"drive {device.drive} is on both {seen[device.drive]} and {name}")
        seen[device.drive] = name

    for required in ("name", "cpu", "mem"):
        if required not in keys:
            raise UsageError(f"missing key {required}")
    cpu = parse_int("cpu", keys["cpu"], *CPU_RANGE)
    mem = parse_int("mem", keys["mem"], *MEM_RANGE)
    smp_text = keys.get("smp", "auto").strip()
    if smp_text == "auto":
        smp = max(1, min(SMP_RANGE[1], math.ceil(cpu / MHZ_PER_CORE)))
    else:
        smp = parse_int("smp", smp_text, *SMP_RANGE)

    boot = tuple(keys.get("boot", "").split())
    for name in boot:
        if name not in devices:
            raise UsageError(f"boot: {name} is not a device of this server")
    if len(set(boot)) != len(boot):
        raise UsageError("boot: a device is named twice")

    nics = tuple(_nic(index, nic_keys[index]) for index in sorted(nic_keys))
    macs = [n.mac for n in nics if n.mac]
    if len(set(macs)) != len(macs):
        raise UsageError("nic:N:mac: two NICs have the same MAC")

    password = keys.get("vnc:password", keys.get("password"))
    if password is not None and len(password) > 8:
        raise UsageError("vnc:password: at most 8 characters")
    vnc_value = keys.get("vnc", keys.get("vnc:ip"))
    vnc = _auto_or_address("vnc", vnc_value) if vnc_value is not None else None
    if vnc is None and password:
        vnc = "auto"
    return ServerSpec(
        name=parse_name("name", keys["name"]),
        cpu=cpu,
        mem=mem,
        smp=smp,
        persistent=parse_bool("persistent", keys["persistent"]) if "persistent" in keys else False,
        devices=tuple(devices.values()),
        boot=boot,
        nics=nics,
        vnc=vnc if password else None,
        vnc_password=password or None,
        vnc_tls=keys.get("vnc:tls", "").strip() == "on",
        tags=parse_tags("tags", keys.get("tags", "")),
        meta=user_meta(keys),
        avoid_drives=parse_uuid_list("avoid:drives", keys.get("avoid:drives", "")),
        avoid_servers=parse_uuid_list("avoid:servers", keys.get("avoid:servers", "")),
        callback_exit=_callback(keys["callback:exit"]) if "callback:exit" in keys else None,
        host=keys["host"].strip() if "host" in keys else None,
        shared=parse_uuid_list("shared", keys.get("shared", "")),
    )


def _nic(index: int, keys: dict[str, str]) -> NicSpec:
    prefix = f"nic:{index}"
    if index >= MAX_NICS:
        raise UsageError(f"{prefix}: at most {MAX_NICS} NICs")
    if "model" not in keys:
        raise UsageError(f"{prefix}:model is required to create NIC {index}")
    try:
        model = NicModel(keys["model"].strip())
    except ValueError:
        raise UsageError(
            f"{prefix}:model: {keys['model'][:20]!r} is not e1000, rtl8139 or virtio"
        ) from None
    vlan = parse_uuid(f"{prefix}:vlan", keys["vlan"]) if "vlan" in keys else None
    dhcp = _auto_or_address(f"{prefix}:dhcp", keys["dhcp"]) if "dhcp" in keys else None
    if vlan and dhcp:
        raise UsageError(f"{prefix}: dhcp addresses are for the public network, not a VLAN")
    mac = _mac(f"{prefix}:mac", keys["mac"]) if "mac" in keys else None
    return NicSpec(index=index, model=model, mac=mac, vlan=vlan, dhcp=dhcp)


# -- the stored server and its info ---------------------------------------------


class ServerStatus(enum.Enum):
    """Where a server is in its life, as the store records it.

    ``starting`` is a create between its transaction and the guest running
    (the reconciler finishes or undoes it after a crash), never shown to
    users. ``paused`` is a guest the owner suspended: QEMU holds its vCPUs,
    it keeps its devices, claims and host, and is billed as running.
    """

    STARTING = "starting"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"


#: What info shows for each status (a pause the infrastructure needs, to
#: move a guest, must not use ``paused``: moving is invisible, DESIGN.md
#: promise 3).
_SHOWN_STATUS = {
    ServerStatus.STARTING: "starting",
    ServerStatus.ACTIVE: "active",
    ServerStatus.STOPPED: "stopped",
    ServerStatus.PAUSED: "paused",
}


@dataclass(frozen=True)
class Nic:
    """A NIC as realised: what its :class:`NicSpec` asked for, with the MAC
    fixed (generated when none was given, then kept for the server's life)
    and ``ip``, the public address in use, if any."""

    index: int
    model: NicModel
    mac: str
    vlan: str | None = None
    ip: str | None = None


@dataclass(frozen=True)
class Server:
    """One server as the store holds it.

    ``config`` is the configuration as validated: the one record of what the
    user asked for, from which :attr:`spec` is parsed again (for info, and
    to start the guest again after a stop or a restart). The other fields
    are what running it decided: the host, the NICs' MACs and addresses, the
    VNC port.
    """

    uuid: str
    user: str
    config: Mapping[str, str]
    status: ServerStatus
    host: str
    nics: tuple[Nic, ...] = ()
    started: float | None = None
    vnc_ip: str | None = None
    vnc_port: int | None = None

    @functools.cached_property
    def spec(self) -> ServerSpec:
        """The configuration parsed; cached, as a list of servers may be long."""
        return parse_server_spec(dict(self.config))


def server_info(server: Server) -> Record:
    """The info record, without the I/O counters (the service adds those).

    Every configuration key is shown, so an info record sent back as input
    describes the same server (what parsing ignores, it ignores).
    """
    spec = server.spec
    info: dict[str, str | int] = {
        "server": server.uuid,
        "user": server.user,
        "name": spec.name,
        "status": _SHOWN_STATUS[server.status],
    }
    if server.started is not None:
        info["started"] = int(server.started)
    info.update(cpu=spec.cpu, mem=spec.mem, smp=spec.smp, persistent=str(spec.persistent).lower())
    for device in spec.devices:
        info[device.name] = device.drive
        info[f"{device.name}:media"] = device.media.value
    if spec.boot:
        info["boot"] = " ".join(spec.boot)
    configured = {nic.index: nic for nic in spec.nics}
    for nic in server.nics:
        prefix = f"nic:{nic.index}"
        info[f"{prefix}:model"] = nic.model.value
        dhcp = configured[nic.index].dhcp if nic.index in configured else None
        if dhcp is not None:
            info[f"{prefix}:dhcp"] = dhcp
        if nic.ip is not None:
            info[f"{prefix}:dhcp:ip"] = nic.ip
        if nic.vlan is not None:
            info[f"{prefix}:vlan"] = nic.vlan
        info[f"{prefix}:mac"] = nic.mac
    # vnc:ip is where to connect while the guest runs, else as configured
    # ("auto" or an address), the spelling older clients send too.
    if server.vnc_port is not None and server.vnc_ip is not None:
        info["vnc:ip"] = server.vnc_ip
        info["vnc:port"] = server.vnc_port
    elif spec.vnc is not None:
        info["vnc:ip"] = spec.vnc
    if spec.vnc_password is not None:
        info["vnc:password"] = spec.vnc_password
    if spec.vnc_tls:
        info["vnc:tls"] = "on"
    if spec.tags:
        info["tags"] = " ".join(spec.tags)
    if spec.avoid_drives:
        info["avoid:drives"] = " ".join(spec.avoid_drives)
    if spec.avoid_servers:
        info["avoid:servers"] = " ".join(spec.avoid_servers)
    if spec.callback_exit is not None:
        info["callback:exit"] = spec.callback_exit
    if spec.host is not None:
        info["host"] = spec.host
    info.update(spec.meta)
    return info
