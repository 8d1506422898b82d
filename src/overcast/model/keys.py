"""Parsers for the value types that many ElasticHosts keys share.

Each takes the key's name so that its error names the offending key.
"""

from __future__ import annotations

import re
import uuid as _uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from overcast.model.codec import check_value
from overcast.model.errors import UsageError

__all__ = [
    "EVERYONE",
    "MAX_SIZE",
    "MAX_TAG",
    "parse_bool",
    "parse_int",
    "parse_name",
    "parse_size",
    "parse_tags",
    "parse_time",
    "parse_uuid",
    "parse_uuid_list",
    "user_meta",
]

#: ``readers`` value that lets every user read a drive.
EVERYONE = "ffffffff-ffff-ffff-ffff-ffffffffffff"
#: Largest drive we accept: 64 TiB.
MAX_SIZE = 64 << 40
_SUFFIX = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]+)([kKMGT]?)")
_INT = re.compile(r"-?[0-9]+")
#: More digits than any limit we check needs; it keeps int() cheap (and under
#: Python's 4300-digit guard) whatever a path or body holds.
_MAX_DIGITS = 24
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_TAG = 64
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
#: Times up to the year 5138: well past any ledger, well inside a float.
_MAX_TIME = 1e11


def parse_uuid(key: str, value: str) -> str:
    """A lower-case UUID, as the API writes IDs (upper case is accepted)."""
    text = value.strip().lower()
    if not _UUID.fullmatch(text):
        raise UsageError(f"{key}: {value[:60]!r} is not a UUID")
    return str(_uuid.UUID(text))


def parse_uuid_list(key: str, value: str) -> tuple[str, ...]:
    """Space-separated UUIDs, normalised, repeats dropped, order kept."""
    seen: dict[str, None] = {}
    for token in value.split():
        seen[parse_uuid(key, token)] = None
    return tuple(seen)


def parse_size(key: str, value: str, *, allow_zero: bool = False, limit: int = MAX_SIZE) -> int:
    """Bytes, or a number with ``k``/``M``/``G``/``T`` (binary multiples).

    Zero is refused unless ``allow_zero`` (a drive has a size; a quota may
    be nothing at all). ``limit`` is the largest drive unless said otherwise.
    """
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise UsageError(
            f"{key}: {value[:60]!r} is not a size (bytes, or a number with k, M, G, T)"
        )
    digits, suffix = match.groups()
    too_large = f"{key}: {value.strip()[:60]} is larger than the limit, {_human(limit)}"
    if len(digits.lstrip("0")) > _MAX_DIGITS:
        raise UsageError(too_large)
    size = int(digits) * _SUFFIX[suffix]
    if size == 0 and not allow_zero:
        raise UsageError(f"{key}: size must be positive")
    if size > limit:
        raise UsageError(too_large)
    return size


def _human(size: int) -> str:
    for suffix in "TGMk":
        if size % _SUFFIX[suffix] == 0:
            return f"{size // _SUFFIX[suffix]}{suffix}"
    return str(size)


def parse_int(key: str, value: str, low: int, high: int) -> int:
    """A decimal integer in ``low..high``."""
    text = value.strip()
    if not _INT.fullmatch(text):
        raise UsageError(f"{key}: {value[:60]!r} is not an integer")
    if len(text.lstrip("-0")) > _MAX_DIGITS:
        raise UsageError(f"{key}: {text[:60]}... is out of range {low}..{high}")
    number = int(text)
    if not low <= number <= high:
        raise UsageError(f"{key}: {number} is out of range {low}..{high}")
    return number


def parse_bool(key: str, value: str) -> bool:
    """The spellings of yes and no that ElasticHosts-era clients send."""
    text = value.strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise UsageError(f"{key}: {value[:60]!r} is not true or false")


def parse_name(key: str, value: str) -> str:
    """A name: one line of up to 255 characters, surrounding blanks dropped.

    Values from the codec are already one line; names from elsewhere (the
    command line) are checked the same way here.
    """
    check_value(key, value)
    name = value.strip()
    if not name:
        raise UsageError(f"{key} must not be empty")
    if len(name) > 255:
        raise UsageError(f"{key} is longer than 255 characters")
    return name


def parse_tags(key: str, value: str) -> tuple[str, ...]:
    """Space-separated words of up to 64 printable characters; repeats dropped."""
    check_value(key, value)
    tags: dict[str, None] = {}
    for tag in value.split():
        if len(tag) > MAX_TAG:
            raise UsageError(f"{key}: tag {tag[:20]!r}... is longer than {MAX_TAG} characters")
        if not tag.isprintable():
            raise UsageError(f"{key}: tag {tag!r} contains an unprintable character")
        tags[tag] = None
    return tuple(tags)


def user_meta(keys: Mapping[str, str]) -> dict[str, str]:
    """The free ``user:*`` metadata among ``keys``."""
    return {k: v for k, v in keys.items() if k.startswith("user:")}


def parse_time(key: str, text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    value = text.strip()
    if _NUMBER.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(
                f"{key}: {text[:60]!r} is neither epoch seconds nor an ISO 8601 time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp()
    if not 0 <= seconds < _MAX_TIME:
        raise UsageError(f"{key}: {text[:60]!r} is out of range")
    return seconds
