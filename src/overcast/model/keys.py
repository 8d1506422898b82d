"""Parsers for the value types that many ElasticHosts keys share.

Each takes the key's name so that its error names the offending key.
"""

from __future__ import annotations

import re
import uuid as _uuid
from collections.abc import Mapping

from overcast.model.errors import UsageError

__all__ = [
    "EVERYONE",
    "MAX_SIZE",
    "parse_bool",
    "parse_int",
    "parse_name",
    "parse_size",
    "parse_tags",
    "parse_uuid",
    "parse_uuid_list",
    "user_meta",
]

#: ``readers`` value that lets every user read a drive.
EVERYONE = "ffffffff-ffff-ffff-ffff-ffffffffffff"
#: Largest drive we accept: 64 TiB.
MAX_SIZE = 64 << 40
_SUFFIX = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]{1,20})([kKMGT]?)")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TAG = re.compile(r"[!-~]{1,64}")


def parse_uuid(key: str, value: str) -> str:
    """A lower-case UUID, as the API writes IDs (upper case is accepted)."""
    text = value.strip().lower()
    if not _UUID.fullmatch(text):
        raise UsageError(f"{key}: {value[:60]!r} is not a UUID")
    return str(_uuid.UUID(text))


def parse_uuid_list(key: str, value: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for token in value.split():
        seen[parse_uuid(key, token)] = None
    return tuple(seen)


def parse_size(key: str, value: str) -> int:
    """Bytes, or a number with ``k``/``M``/``G``/``T`` (binary multiples)."""
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise UsageError(
            f"{key}: {value[:60]!r} is not a size (bytes, or a number with k, M, G, T)"
        )
    size = int(match.group(1)) * _SUFFIX[match.group(2)]
    if size <= 0:
        raise UsageError(f"{key}: size must be positive")
    if size > MAX_SIZE:
        raise UsageError(f"{key}: {value} is larger than the 64 TiB limit")
    return size


def parse_int(key: str, value: str, low: int, high: int) -> int:
    text = value.strip()
    if not re.fullmatch(r"-?[0-9]{1,12}", text):
        raise UsageError(f"{key}: {value[:60]!r} is not an integer")
    number = int(text)
    if not low <= number <= high:
        raise UsageError(f"{key}: {number} is out of range {low}..{high}")
    return number


def parse_bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise UsageError(f"{key}: {value[:60]!r} is not true or false")


def parse_name(key: str, value: str) -> str:
    name = value.strip()
    if not name:
        raise UsageError(f"{key} must not be empty")
    if len(name) > 255:
        raise UsageError(f"{key} is longer than 255 characters")
    return name


def parse_tags(key: str, value: str) -> tuple[str, ...]:
    tags: dict[str, None] = {}
    for tag in value.split():
        if not _TAG.fullmatch(tag):
            raise UsageError(f"{key}: tag {tag[:70]!r} is longer than 64 characters")
        tags[tag] = None
    return tuple(tags)


def user_meta(keys: Mapping[str, str]) -> dict[str, str]:
    """The free ``user:*`` metadata among ``keys``."""
    return {k: v for k, v in keys.items() if k.startswith("user:")}
