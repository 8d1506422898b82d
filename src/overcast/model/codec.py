"""The ElasticHosts key/value codec: text lines and JSON, both ways.

One place decodes request bodies into a flat ``{key: str}`` mapping and
encodes replies from :data:`Record` mappings. Values are strings on the way
in (JSON numbers and booleans are accepted and turned into their text form,
so validation downstream has one input type) and ``str | int`` on the way
out (JSON shows numbers as numbers; text shows them as digits).

Text: one ``key value`` per line, the key runs to the first space, the value
is the rest of the line. Several objects are separated by a blank line.

Whatever either decoder accepts, both encoders can write and both decoders
read back unchanged: so a value is one line of real text (no control
character but tab, no Unicode line separator, no lone surrogate), whichever
encoding it came in. Anything else is a :class:`UsageError` naming the key;
no input makes a decoder raise anything else.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence

from overcast.model.errors import UsageError

__all__ = [
    "MAX_KEY",
    "MAX_KEYS",
    "MAX_VALUE",
    "Keys",
    "Record",
    "check_value",
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
#: Characters no value may hold: C0 and C1 controls (tab excepted) and the
#: Unicode line and paragraph separators, since any of them would end or
#: split a line of the text encoding in some client's parser.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
#: Lone surrogates: Python strings may hold them (JSON ``"\ud800"``), UTF-8
#: and therefore every store and client cannot.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
MAX_KEY = 80
MAX_KEYS = 256
MAX_VALUE = 4096


def _check_key(key: str, keys: Keys) -> None:
    if len(key) > MAX_KEY or not _KEY.fullmatch(key):
        raise UsageError(f"malformed key {key[:MAX_KEY]!r}")
    if key in keys:
        raise UsageError(f"key {key} given twice")
    if len(keys) >= MAX_KEYS:
        raise UsageError(f"more than {MAX_KEYS} keys")


def check_value(key: str, value: str) -> None:
    """Raise :class:`UsageError` unless ``value`` fits on one text line.

    The codec applies it to every decoded value; parsers of values that do
    not come through the codec (command-line arguments) apply it too.
    """
    if len(value) > MAX_VALUE:
        raise UsageError(f"value of {key} is longer than {MAX_VALUE} characters")
    if _SURROGATE.search(value):
        raise UsageError(f"value of {key} is not valid Unicode (lone surrogate)")
    if _CONTROL.search(value):
        raise UsageError(f"value of {key} contains a control character or line break")


def decode_text(body: bytes) -> Keys:
    """Decode one object from ``key value`` lines (blank lines ignored).

    Lines end at ``\n`` only (a ``\r`` before it is dropped): splitting on
    every Unicode line boundary, as :meth:`str.splitlines` does, would cut a
    value in two. A leading byte-order mark, as some editors write, is
    skipped.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"request body is not UTF-8 text (byte {err.start})") from err
    keys: Keys = {}
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        _check_key(key, keys)
        check_value(key, value)
        keys[key] = value
    return keys


def _json_text(key: str, value: object) -> str:
    """A JSON value in the text form the parsers take."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"value of {key} must be a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    raise UsageError(f"value of {key} must be a string, number, boolean or list of strings")


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
        _check_key(key, keys)
        text = _json_text(key, value)
        check_value(key, text)
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
