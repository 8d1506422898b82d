"""Properties of the key codec and the shared value parsers.

The codec is the first thing every request meets, so its contract is
checked over generated input rather than a few examples: whatever bytes
arrive, decoding yields keys or a ``UsageError`` (never another exception),
and whatever it accepts can be written back out in either encoding and read
again unchanged.
"""

from __future__ import annotations

import json
import re
import string
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overcast.model.codec import (
    MAX_KEYS,
    MAX_VALUE,
    decode_json,
    decode_text,
    encode_json,
    encode_json_list,
    encode_text,
    encode_text_list,
)
from overcast.model.errors import UsageError
from overcast.model.keys import (
    MAX_SIZE,
    parse_bool,
    parse_int,
    parse_name,
    parse_size,
    parse_tags,
    parse_uuid,
    parse_uuid_list,
)
from overcast.model.user import Quota, parse_quota

SETTINGS = settings(max_examples=150, deadline=None, database=None)
#: The any-input properties search a larger space: more examples.
FUZZ = settings(max_examples=300, deadline=None, database=None)

# -- strategies written from API.md, not from the implementation ----------

_word = st.text(string.ascii_lowercase + string.digits + "_", min_size=1, max_size=8)
#: ``name``, ``nic:0:model``, ``quota:drive:bytes``: lower-case words and colons.
plain_keys = st.builds(
    lambda first, rest: ":".join([first, *rest]),
    st.text(string.ascii_lowercase, min_size=1, max_size=1).flatmap(
        lambda c: _word.map(lambda w: c + w)
    ),
    st.lists(_word, max_size=3),
).filter(lambda k: len(k) <= 80)
#: ``user:*``: free metadata, any printable ASCII without spaces.
meta_keys = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
).map(lambda s: "user:" + s)
keys = st.one_of(plain_keys, meta_keys)
#: A value is one line of text: anything but control characters (tab is
#: fine), line/paragraph separators and lone surrogates.
value_chars = st.one_of(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    st.just("\t"),
)
values = st.text(value_chars, max_size=60)
records = st.dictionaries(keys, values, max_size=12)


#: Characters that have broken line-based codecs before: line breaks Python
#: knows and HTTP clients may not, controls, a lone surrogate, a BOM.
_AWKWARD = "\n\r\t\x00\x0b\x0c\x1c\x1e\x7f\x85\xa0\u2028\u2029\ud800\udfff\ufeff :"
awkward_text = st.text(st.sampled_from(_AWKWARD + "ab"), max_size=8) | st.text(max_size=20)


_json_scalars = st.one_of(
    awkward_text, st.booleans(), st.integers(), st.floats(), st.lists(awkward_text, max_size=3)
)
_json_values = st.recursive(
    st.none() | _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def _json_bodies() -> st.SearchStrategy[bytes]:
    """Mostly near-misses (good keys, awkward values), and some junk."""
    near = st.dictionaries(keys, _json_scalars, max_size=4)
    docs = st.one_of(near, near, near, st.dictionaries(awkward_text | keys, _json_values))
    return st.one_of(
        docs.map(lambda d: json.dumps(d).encode()),
        docs.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        _json_values.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=100),
    )


def _text_bodies() -> st.SearchStrategy[bytes]:
    line = st.tuples(keys, awkward_text).map(" ".join)
    any_line = st.tuples(awkward_text, awkward_text).map(" ".join)
    docs = st.lists(line | line | any_line, max_size=6).map("\n".join)
    return st.one_of(
        docs.map(lambda t: t.encode("utf-8", "surrogatepass")),
        docs.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=100),
    )


# -- round trips ------------------------------------------------------------


@SETTINGS
@given(records)
def test_text_round_trip(record: dict[str, str]) -> None:
    assert decode_text(encode_text(record).encode()) == record


@SETTINGS
@given(records)
def test_json_round_trip(record: dict[str, str]) -> None:
    assert decode_json(encode_json(record).encode()) == record


@SETTINGS
@given(records, st.sampled_from(["\n", "\r\n"]))
def test_text_accepts_crlf_and_blank_lines(record: dict[str, str], eol: str) -> None:
    body = eol + eol.join(f"{k} {v}" for k, v in record.items()) + eol + eol
    assert decode_text(body.encode()) == record


@SETTINGS
@given(st.dictionaries(plain_keys, st.integers(-(10**30), 10**30) | st.booleans(), max_size=8))
def test_json_numbers_and_booleans_become_text(record: dict[str, int | bool]) -> None:
    decoded = decode_json(json.dumps(record).encode())
    for key, value in record.items():
        if isinstance(value, bool):
            assert decoded[key] == ("true" if value else "false")
        else:
            assert decoded[key] == str(value)


def test_json_integral_floats_and_string_lists() -> None:
    decoded = decode_json(b'{"size": 1e3, "mem": 512.0, "tags": ["a", "b"]}')
    assert decoded == {"size": "1000", "mem": "512", "tags": "a b"}


@SETTINGS
@given(st.dictionaries(keys, values | st.integers(0, 2**63), max_size=6), st.integers(0, 3))
def test_several_objects_split_on_blank_lines(record: dict[str, str | int], n: int) -> None:
    text = encode_text([record] * n)
    chunks = [c for c in text.split("\n\n") if c.strip()] if record else []
    assert len(chunks) == (n if record else 0)
    for chunk in chunks:
        assert decode_text(chunk.encode()) == {k: str(v) for k, v in record.items()}
    assert json.loads(encode_json([record] * n)) == [record] * n


@SETTINGS
@given(st.lists(st.uuids().map(str), max_size=5))
def test_lists(ids: list[str]) -> None:
    assert encode_text_list(ids).splitlines() == ids
    assert json.loads(encode_json_list("drive", ids)) == [{"drive": i} for i in ids]


# -- any input: keys or UsageError, and what is accepted re-encodes ---------


@FUZZ
@given(_text_bodies())
def test_any_text_body_decodes_or_is_a_usage_error(body: bytes) -> None:
    try:
        decoded = decode_text(body)
    except UsageError as err:
        assert err.message and "\n" not in err.message
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in decoded.items())
    # Accepted means representable: both encodings carry it back unchanged.
    assert decode_text(encode_text(decoded).encode()) == decoded
    assert decode_json(encode_json(decoded).encode()) == decoded


@FUZZ
@given(_json_bodies())
def test_any_json_body_decodes_or_is_a_usage_error(body: bytes) -> None:
    try:
        decoded = decode_json(body)
    except UsageError as err:
        assert err.message and "\n" not in err.message
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in decoded.items())
    assert decode_json(encode_json(decoded).encode()) == decoded
    assert decode_text(encode_text(decoded).encode()) == decoded


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"name a\nname b\n", "name given twice"),
        (b"Name a\n", "malformed key 'Name'"),
        (b" name a\n", "malformed key ''"),
        (b"name a\xe2\x80\xa8b\n", "name"),  # U+2028 LINE SEPARATOR in a value
        (b"name a\xc2\x85b\n", "name"),  # U+0085 NEXT LINE
        (b"name a\rb\n", "name"),
        (b"name \xff\n", "UTF-8"),
        (b"x " + b"y" * (MAX_VALUE + 1), "longer than"),
        (b"".join(b"user:%d x\n" % i for i in range(MAX_KEYS + 1)), "more than"),
    ],
)
def test_text_refusals_name_the_problem(body: bytes, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        decode_text(body)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"name": "\\ud800"}', "name"),  # lone surrogate: no store could hold it
        (b'{"size": NaN}', "size"),
        (b'{"size": Infinity}', "size"),
        (b'{"name": null}', "name"),
        (b'{"name": {"a": 1}}', "name"),
        (b'{"name": [1]}', "name"),
        (b'{"Name": "x"}', "malformed key 'Name'"),
        (b"[]", "object"),
        (b"{", "malformed JSON"),
        (b"\xff{}", "malformed JSON"),
        (b"[" * 100_000, "malformed JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", "malformed JSON"),
    ],
)
def test_json_refusals_name_the_problem(body: bytes, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        decode_json(body)


def test_text_skips_a_byte_order_mark() -> None:
    assert decode_text("\ufeffname a\n".encode()) == {"name": "a"}


# -- sizes ------------------------------------------------------------------

_MULTIPLE = {"": 1, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@SETTINGS
@given(st.integers(0, 2**50), st.sampled_from(sorted(_MULTIPLE)), st.sampled_from(["", " "]))
def test_sizes_with_suffixes(n: int, suffix: str, pad: str) -> None:
    text = f"{pad}{n}{suffix}{pad}"
    size = n * _MULTIPLE[suffix]
    if 0 < size <= MAX_SIZE:
        assert parse_size("size", text) == size
    else:
        with pytest.raises(UsageError, match=r"^size: "):
            parse_size("size", text)
    if size <= MAX_SIZE:
        assert parse_size("quota", text, allow_zero=True) == size


@SETTINGS
@given(st.text(max_size=30), plain_keys)
def test_any_size_text_parses_or_names_its_key(text: str, key: str) -> None:
    try:
        size = parse_size(key, text)
    except UsageError as err:
        assert err.message.startswith(f"{key}: ")
        return
    assert 0 < size <= MAX_SIZE
    assert re.fullmatch(r"\s*[0-9]+[kKMGT]?\s*", text)


def test_size_refusals() -> None:
    for bad in ("", "1.5G", "-1", "1 G", "1g", "1KB", "0x10", "1e9", "٣", "9" * 5000):
        with pytest.raises(UsageError, match=r"^size: "):
            parse_size("size", bad)
    with pytest.raises(UsageError, match="positive"):
        parse_size("size", "0")
    with pytest.raises(UsageError, match="limit"):
        parse_size("size", "65T")
    assert parse_size("size", "64T") == MAX_SIZE


# -- integers, booleans, names ---------------------------------------------


@SETTINGS
@given(st.integers(-(10**15), 10**15), st.integers(-100, 100), st.integers(0, 10**6))
def test_int_range(n: int, low: int, span: int) -> None:
    high = low + span
    if low <= n <= high:
        assert parse_int("cpu", str(n), low, high) == n
    else:
        with pytest.raises(UsageError, match=r"^cpu: .*out of range"):
            parse_int("cpu", str(n), low, high)


@SETTINGS
@given(st.text(max_size=40))
def test_any_int_text_parses_or_names_its_key(text: str) -> None:
    try:
        parse_int("mem", text, 0, 10**9)
    except UsageError as err:
        assert err.message.startswith("mem: ")


def test_bools() -> None:
    for yes in ("true", "yes", "on", "1", " TRUE "):
        assert parse_bool("persistent", yes) is True
    for no in ("false", "no", "off", "0"):
        assert parse_bool("persistent", no) is False
    with pytest.raises(UsageError, match=r"^persistent: "):
        parse_bool("persistent", "maybe")


def test_names() -> None:
    assert parse_name("name", "  my disk  ") == "my disk"
    for bad, says in (("", "empty"), ("   ", "empty"), ("x" * 256, "255"), ("a\nb", "control")):
        with pytest.raises(UsageError, match=f"^name .*{says}|^value of name .*{says}"):
            parse_name("name", bad)


# -- UUIDs -----------------------------------------------------------------


@SETTINGS
@given(st.uuids(), st.booleans())
def test_uuids_parse_to_lower_case(u: uuid.UUID, upper: bool) -> None:
    text = str(u).upper() if upper else str(u)
    assert parse_uuid("drive", text) == str(u)


@SETTINGS
@given(st.text(max_size=40))
def test_any_uuid_text_parses_or_names_its_key(text: str) -> None:
    try:
        parsed = parse_uuid("drive", text)
    except UsageError as err:
        assert err.message.startswith("drive: ") and "not a UUID" in err.message
        return
    assert parsed == str(uuid.UUID(parsed))
    assert parsed == text.strip().lower()


def test_uuid_spellings_we_refuse() -> None:
    u = uuid.uuid4()
    for bad in (u.hex, "{" + str(u) + "}", u.urn, str(u)[:-1], str(u) + "0"):
        with pytest.raises(UsageError, match="not a UUID"):
            parse_uuid("drive", bad)


@SETTINGS
@given(st.lists(st.uuids(), max_size=6))
def test_uuid_lists_keep_order_and_drop_repeats(ids: list[uuid.UUID]) -> None:
    text = " ".join(str(i).upper() for i in ids + ids)
    assert parse_uuid_list("readers", text) == tuple(dict.fromkeys(str(i) for i in ids))


# -- tags ------------------------------------------------------------------

tags = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=64,
).filter(lambda t: t.split() == [t])


@SETTINGS
@given(st.lists(tags, max_size=8), st.sampled_from([" ", "  ", "\t"]))
def test_tags_round_trip(words: list[str], sep: str) -> None:
    parsed = parse_tags("tags", sep.join(words))
    assert parsed == tuple(dict.fromkeys(words))
    assert parse_tags("tags", " ".join(parsed)) == parsed


def test_tag_refusals_say_why() -> None:
    with pytest.raises(UsageError, match=r"^tags: .*longer than 64"):
        parse_tags("tags", "ok " + "x" * 65)
    with pytest.raises(UsageError, match=r"^tags: .*unprintable"):
        parse_tags("tags", "ok a\u200bb")
    assert parse_tags("tags", "web prod db-1 ünïcode") == ("web", "prod", "db-1", "ünïcode")


# -- quota values ------------------------------------------------------------


def test_quota_zero_none_and_sizes() -> None:
    quota = parse_quota(
        {"quota:drive:bytes": "0", "quota:servers": "3", "quota:cpu": "none", "quota:mem": "2048"},
        Quota(cpu=1000),
    )
    assert quota == Quota(drive_bytes=0, servers=3, cpu=None, mem=2048)
    assert parse_quota({"quota:drive:bytes": "100T"}, quota).drive_bytes == 100 * 1024**4
    assert parse_quota({"quota:drive:bytes": "NONE"}, quota).drive_bytes is None
    for key, bad in (("quota:servers", "-1"), ("quota:cpu", "lots"), ("quota:mem", "2" * 30)):
        with pytest.raises(UsageError, match=f"^{key}: "):
            parse_quota({key: bad}, quota)
    with pytest.raises(UsageError, match="unknown key quota:disk"):
        parse_quota({"quota:disk": "1"}, quota)
