"""IP and VLAN resources: records, keys and info rendering.

IPs are drawn by the cloud from the operator's pools; a user owns an
address until destroying it. VLANs are private networks named by UUID.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from overcast.model.codec import Keys, Record
from overcast.model.errors import UsageError
from overcast.model.keys import parse_name, parse_tags, user_meta

__all__ = [
    "Ip",
    "ResourceChanges",
    "ResourceType",
    "Vlan",
    "ip_info",
    "parse_resource_changes",
    "parse_resource_type",
    "vlan_info",
]


class ResourceType(enum.Enum):
    IP = "ip"
    VLAN = "vlan"


def parse_resource_type(value: str) -> ResourceType:
    try:
        return ResourceType(value)
    except ValueError:
        raise UsageError(f"unknown resource type {value[:40]!r} (ip or vlan)") from None


@dataclass(frozen=True)
class Ip:
    address: str
    user: str
    name: str
    netmask: str
    gateway: str | None
    nameserver: str | None
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Vlan:
    uuid: str
    user: str
    name: str
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourceChanges:
    """``name``, ``tags`` and ``user:*``: the keys a resource's owner sets,
    on create as on set. None means "leave as is" (on create: the default).
    """

    name: str | None = None
    tags: tuple[str, ...] | None = None
    meta: Mapping[str, str] = field(default_factory=dict)


_READ_ONLY = frozenset({"resource", "type", "user", "netmask", "gateway", "nameserver"})


def parse_resource_changes(keys: Keys) -> ResourceChanges:
    """Validate the keys of ``create`` or ``set``.

    What info shows (``resource``, ``type``, ...) may be sent back and is
    ignored, as for drives, so that an edited info record is valid input.
    """
    for key in keys:
        if key not in ("name", "tags") and key not in _READ_ONLY and not key.startswith("user:"):
            raise UsageError(f"unknown key {key}")
    return ResourceChanges(
        name=parse_name("name", keys["name"]) if "name" in keys else None,
        tags=parse_tags("tags", keys["tags"]) if "tags" in keys else None,
        meta=user_meta(keys),
    )


def _common(rtype: ResourceType, rid: str, user: str, name: str) -> dict[str, str | int]:
    return {"resource": rid, "type": rtype.value, "name": name, "user": user}


def ip_info(ip: Ip) -> Record:
    info = _common(ResourceType.IP, ip.address, ip.user, ip.name)
    info["netmask"] = ip.netmask
    if ip.gateway:
        info["gateway"] = ip.gateway
    if ip.nameserver:
        info["nameserver"] = ip.nameserver
    if ip.tags:
        info["tags"] = " ".join(ip.tags)
    info.update(ip.meta)
    return info


def vlan_info(vlan: Vlan) -> Record:
    info = _common(ResourceType.VLAN, vlan.uuid, vlan.user, vlan.name)
    if vlan.tags:
        info["tags"] = " ".join(vlan.tags)
    info.update(vlan.meta)
    return info
