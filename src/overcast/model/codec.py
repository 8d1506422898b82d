"""The ElasticHosts key/value codec: text lines and JSON, both ways.

One place decodes request bodies into a flat ``{key: str}`` mapping and
encodes replies from :data:`Record` mappings. Values are strings on the way
in (JSON numbers and booleans are accepted and turned into their text form,
so validation downstream has one input type) and ``str | int`` on the way
out (JSON shows numbers as numbers; text shows them as digits).

Text: one ``key value`` per line, the key runs to the first space, the value
is the rest of the line. Several objects are separated by a blank line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

from overcast.model.errors import UsageError

__all__ = [
    "MAX_KEYS",
    "MAX_VALUE",
    "Keys",
    "Record",
    "decode_json",
    "decode_text",
    "encode_json",
    "encode_json_list",
    "encode_text",
    "encode_text_list",
]

Keys = dict[str, str]
Record = Mapping[str, "str | int"]

#: A key: lower-case word parts joined by colons; ``user:`` metadata may use
#: any printable, spaceless characters after its prefix.
_KEY = re.compile(r"[a-z][a-z0-9_]*(?::[a-z0-9_]+)*|user:[!-~]{1,64}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_KEYS = 256
MAX_VALUE = 4096


def _check(key: str, value: str, keys: Keys) -> None:
    if len(key) > 80 or not _KEY.fullmatch(key):
        raise UsageError(f"malformed key {key[:80]!r}")
    if key in keys:
        raise UsageError(f"key {key} given twice")
    if len(value) > MAX_VALUE:
        raise UsageError(f"value of {key} is longer than {MAX_VALUE} characters")
    if _CONTROL.search(value):
        raise UsageError(f"value of {key} contains a control character")
    if len(keys) >= MAX_KEYS:
        raise UsageError(f"more than {MAX_KEYS} keys")


def decode_text(body: bytes) -> Keys:
    """Decode one object from ``key value`` lines (blank lines ignored)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError("request body is not UTF-8 text") from err
    keys: Keys = {}
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        _check(key, value, keys)
        keys[key] = value
    return keys


def decode_json(body: bytes) -> Keys:
    """Decode one JSON object whose values are strings, numbers or booleans."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise UsageError(f"malformed JSON body: {err}") from err
    if not isinstance(data, dict):
        raise UsageError("JSON body must be an object")
    keys: Keys = {}
    for key, value in data.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            if isinstance(value, float) and not value.is_integer():
                text = repr(value)
            else:
                text = str(int(value))
        elif isinstance(value, str):
            text = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            text = " ".join(value)
        else:
            raise UsageError(f"value of {str(key)[:80]} must be a string, number or boolean")
        _check(key, text, keys)
        keys[key] = text
    return keys


def _text_lines(record: Record) -> Iterable[str]:
    for key, value in record.items():
        yield f"{key} {value}"


def encode_text(records: Record | Sequence[Record]) -> str:
    """One object as lines; several separated by a blank line."""
    if isinstance(records, Mapping):
        records = [records]
    return "\n\n".join("\n".join(_text_lines(r)) for r in records) + ("\n" if records else "")


def encode_json(records: Record | Sequence[Record]) -> str:
    if isinstance(records, Mapping):
        return json.dumps(dict(records))
    return json.dumps([dict(r) for r in records])


def encode_text_list(values: Sequence[str]) -> str:
    """A list is one value per line."""
    return "".join(f"{v}\n" for v in values)


def encode_json_list(field: str, values: Sequence[str]) -> str:
    """A list in JSON is an array of one-key objects, ``[{"drive": "…"}]``."""
    return json.dumps([{field: v} for v in values])
