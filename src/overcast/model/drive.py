"""Drives: the record, the keys a user may send, and the info rendering.

A drive is a block device image owned by one user (or, for library
"standard" drives, by nobody and readable by all). The keys and their rules
come from API.md; this module is the only place that knows them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from overcast.model.codec import Keys, Record
from overcast.model.errors import UsageError
from overcast.model.keys import (
    EVERYONE,
    parse_name,
    parse_size,
    parse_tags,
    parse_uuid_list,
    user_meta,
)

__all__ = [
    "ClaimType",
    "Drive",
    "DriveChanges",
    "DriveSpec",
    "LibraryFormat",
    "Media",
    "drive_info",
    "parse_drive_changes",
    "parse_drive_spec",
]


class ClaimType(enum.Enum):
    EXCLUSIVE = "exclusive"
    SHARED = "shared"


class Media(enum.Enum):
    DISK = "disk"
    CDROM = "cdrom"


class LibraryFormat(enum.Enum):
    RAW = "raw"
    GZIP = "gzip"


@dataclass(frozen=True)
class Drive:
    """One drive as the store holds it. ``user`` is None for library drives."""

    uuid: str
    user: str | None
    name: str
    size: int
    claim_type: ClaimType = ClaimType.EXCLUSIVE
    readers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    imaging: str | None = None
    claimed: tuple[str, ...] = ()
    read_bytes: int = 0
    read_requests: int = 0
    write_bytes: int = 0
    write_requests: int = 0
    media: Media | None = None
    format: LibraryFormat | None = None
    rawsize: int | None = None

    @property
    def standard(self) -> bool:
        return self.user is None

    def readable_by(self, user: str) -> bool:
        """Whether ``user`` may read and image this drive."""
        return self.user == user or self.standard or bool({user, EVERYONE} & set(self.readers))


@dataclass(frozen=True)
class DriveSpec:
    """What ``/drives/create`` asks for, validated."""

    name: str
    size: int
    claim_type: ClaimType = ClaimType.EXCLUSIVE
    readers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DriveChanges:
    """What ``/drives/D/set`` changes; None means "leave as is"."""

    name: str | None = None
    size: int | None = None
    claim_type: ClaimType | None = None
    readers: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    meta: Mapping[str, str] = field(default_factory=dict)


_SETTABLE = frozenset({"name", "size", "claim:type", "readers", "tags"})
#: Keys that info shows and a client may echo back unchanged; ignored on input.
_READ_ONLY = frozenset(
    {
        "drive",
        "user",
        "status",
        "claimed",
        "imaging",
        "read:bytes",
        "read:requests",
        "write:bytes",
        "write:requests",
        "media",
        "format",
        "rawsize",
    }
)


def _claim_type(value: str) -> ClaimType:
    try:
        return ClaimType(value.strip())
    except ValueError:
        raise UsageError(f"claim:type: {value[:40]!r} is not exclusive or shared") from None


def _check_known(keys: Keys, allowed: frozenset[str]) -> None:
    for key in keys:
        if key not in allowed and key not in _READ_ONLY and not key.startswith("user:"):
            raise UsageError(f"unknown key {key}")


def parse_drive_spec(keys: Keys) -> DriveSpec:
    _check_known(keys, _SETTABLE)
    for required in ("name", "size"):
        if required not in keys:
            raise UsageError(f"missing key {required}")
    return DriveSpec(
        name=parse_name("name", keys["name"]),
        size=parse_size("size", keys["size"]),
        claim_type=_claim_type(keys["claim:type"]) if "claim:type" in keys else ClaimType.EXCLUSIVE,
        readers=parse_uuid_list("readers", keys.get("readers", "")),
        tags=parse_tags("tags", keys.get("tags", "")),
        meta=user_meta(keys),
    )


def parse_drive_changes(keys: Keys) -> DriveChanges:
    _check_known(keys, _SETTABLE)
    return DriveChanges(
        name=parse_name("name", keys["name"]) if "name" in keys else None,
        size=parse_size("size", keys["size"]) if "size" in keys else None,
        claim_type=_claim_type(keys["claim:type"]) if "claim:type" in keys else None,
        readers=parse_uuid_list("readers", keys["readers"]) if "readers" in keys else None,
        tags=parse_tags("tags", keys["tags"]) if "tags" in keys else None,
        meta=user_meta(keys),
    )


def drive_info(drive: Drive) -> Record:
    """The info record, keys in API.md's order."""
    info: dict[str, str | int] = {
        "drive": drive.uuid,
        "name": drive.name,
        "size": drive.size,
        "status": "active",
    }
    if drive.user is not None:
        info["user"] = drive.user
    info["claim:type"] = drive.claim_type.value
    if drive.claimed:
        info["claimed"] = " ".join(drive.claimed)
    if drive.imaging is not None:
        info["imaging"] = drive.imaging
    if drive.standard or drive.readers:
        info["readers"] = EVERYONE if drive.standard else " ".join(drive.readers)
    if drive.tags:
        info["tags"] = " ".join(drive.tags)
    if drive.media is not None:
        info["media"] = drive.media.value
    if drive.format is not None:
        info["format"] = drive.format.value
    if drive.rawsize is not None:
        info["rawsize"] = drive.rawsize
    info.update(
        {
            "read:bytes": drive.read_bytes,
            "read:requests": drive.read_requests,
            "write:bytes": drive.write_bytes,
            "write:requests": drive.write_requests,
        }
    )
    info.update(drive.meta)
    return info
