"""Bad input never changes anything, and others' objects do not exist.

Generated bad requests go to the real server: each must get a 4xx with the
``X-Elastic-Error`` that API.md's table gives, a one-line body naming the
problem, and must leave the caller's drives and resources (or, for the
admin calls, the users) exactly as they were.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import Cloud, new_user

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
JSON = {"Accept": "application/json"}
POOL = "198.51.100.224/27"
#: In no pool of ours (TEST-NET-3): nobody can own it.
NOBODYS_IP = "203.0.113.77"

# -- fixtures: one owner with one of everything, one stranger ---------------


@dataclass
class Owner:
    client: httpx.Client
    uuid: str
    drive: str
    ip: str
    vlan: str


def _info(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return dict(line.split(" ", 1) for line in r.text.splitlines())


@pytest.fixture(scope="module")
def owner(cloud: Cloud) -> Iterator[Owner]:
    done = cloud.overcast("admin", "ip", "add-pool", POOL, "--gateway", "198.51.100.225")
    # The session's cloud is shared: another module may have added this range.
    assert done.returncode == 0 or "overlaps" in done.stderr, done.stderr
    with new_user(cloud, "owner") as client:
        me = _info(client.get("/user/info"))["user"]
        drive = _info(client.post("/drives/create", content="name mine\nsize 64k\n"))["drive"]
        ip = _info(client.post("/resources/ip/create", content="name mine\n"))["resource"]
        vlan = _info(client.post("/resources/vlan/create", content="name mine\n"))["resource"]
        yield Owner(client, me, drive, ip, vlan)


@pytest.fixture(scope="module")
def stranger(cloud: Cloud) -> Iterator[httpx.Client]:
    with new_user(cloud, "stranger") as client:
        client.post("/drives/create", content="name theirs\nsize 64k\n").raise_for_status()
        yield client


@pytest.fixture(scope="module")
def root(cloud: Cloud) -> Iterator[httpx.Client]:
    with cloud.admin_client() as client:
        yield client


@pytest.fixture(scope="module")
def victim(root: httpx.Client) -> str:
    """A user for the admin's ``/users/U/set`` calls."""
    victim = _info(root.post("/users/create", content="name victim\n"))["user"]
    root.post(f"/users/{victim}/set", content="quota:cpu 1000\n").raise_for_status()
    return victim


def _state(client: httpx.Client) -> tuple[Any, Any]:
    drives = client.get("/drives/info", headers=JSON)
    resources = client.get("/resources/info", headers=JSON)
    assert drives.status_code == resources.status_code == 200
    return drives.json(), resources.json()


def _users(root: httpx.Client) -> Any:
    r = root.get("/users/info", headers=JSON)
    assert r.status_code == 200
    return r.json()


def _refused(r: httpx.Response, status: int, kind: str, says: str) -> None:
    """The reply API.md demands: status, error kind, one line naming it."""
    assert (r.status_code, r.headers.get("x-elastic-error")) == (status, kind), r.text
    assert r.text.endswith("\n") and r.text.count("\n") == 1, r.text
    assert says in r.text, (says, r.text)


# -- generated bad bodies -----------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request body that must be refused with 400 usage and ``says``."""

    body: bytes
    content_type: str | None
    says: str

    def send(self, client: httpx.Client, path: str) -> httpx.Response:
        headers = {"Content-Type": self.content_type} if self.content_type else {}
        return client.post(path, content=self.body, headers=headers)


#: Keys as the codec defines them: lower-case words joined by colons, or
#: ``user:`` and printable ASCII.
_KEY = re.compile(r"[a-z][a-z0-9_]*(?::[a-z0-9_]+)*|user:[!-~]{1,64}")
_text_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\n")
malformed_keys = st.text(_text_chars, min_size=1, max_size=20).filter(
    lambda k: k.split() == [k] and not k.startswith("\ufeff") and not _KEY.fullmatch(k)
)
word_keys = st.from_regex(r"[a-z][a-z0-9]{0,10}(:[a-z0-9]{1,6}){0,2}", fullmatch=True)
#: Values of any text, even control characters and lone surrogates (which
#: only JSON's ``\\ud800`` escapes can carry): whatever the value, a bad one
#: must be refused under the key's name.
any_values = st.text(st.characters() | st.sampled_from("\ud800\udfff\x00\x85\u2028"), max_size=30)
_SIZE_GRAMMAR = re.compile(r"\s*[0-9]+[kKMGT]?\s*")
bad_sizes = st.one_of(
    any_values.filter(lambda v: not _SIZE_GRAMMAR.fullmatch(v)),
    st.sampled_from(["0", "0k", "65T", "1.5G", "-1", "1g", "1 G", "9" * 40]),
)
bad_uuid_lists = st.lists(
    st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40), min_size=1
).map(" ".join)
long_tags = st.text(string.ascii_letters, min_size=65, max_size=80).map(lambda t: f"ok {t}")
bad_names = st.sampled_from(["", "   ", "x" * 256, "a\x00b", "a\rb", "a\u2028b", "a\ud800"])
#: Free metadata is free, but must still be one line of real text.
bad_meta = st.sampled_from(["a\ud800", "\udfff", "a\x00", "a\u2028b", "a\x85", "x" * 5000])
bad_bools = any_values.filter(
    lambda v: v.strip().lower() not in {"true", "false", "yes", "no", "on", "off", "1", "0"}
)
bad_counts = st.one_of(
    any_values.filter(
        lambda v: not re.fullmatch(r"\s*[0-9]+\s*", v) and v.strip().lower() != "none"
    ),
    st.integers(max_value=-1).map(str),
    st.just(str(2**62)),
)


def _encode(keys: dict[str, str], as_json: bool) -> tuple[bytes, str | None]:
    if as_json:
        return json.dumps(keys).encode(), "application/json"
    return "".join(f"{k} {v}\n" for k, v in keys.items()).encode(), None


@st.composite
def bad_bodies(
    draw: st.DrawFn,
    base: dict[str, str],
    known: frozenset[str],
    bad_values: dict[str, st.SearchStrategy[str]],
) -> Bad:
    """``base`` (valid on its own) spoiled in one way, in either encoding."""
    as_json = draw(st.booleans())
    kind = draw(st.sampled_from(["malformed", "unknown", "value", "json", "utf8"]))
    if kind == "json":
        junk = draw(st.binary(min_size=1, max_size=60).filter(_not_a_json_object))
        return Bad(junk, "application/json", "JSON")
    if kind == "utf8":
        junk = draw(st.binary(min_size=1, max_size=60).filter(_not_utf8))
        return Bad(junk, draw(st.sampled_from([None, "text/plain"])), "UTF-8")
    keys = dict(base)
    if kind == "malformed":
        keys[draw(malformed_keys)] = "x"
        says = "malformed key"
    elif kind == "unknown":
        key = draw(word_keys.filter(lambda k: k not in known and not k.startswith("user:")))
        keys[key] = "x"
        says = f"unknown key {key}"
    else:
        key = draw(st.sampled_from(sorted(bad_values)))
        keys[key] = draw(bad_values[key])
        says = key
    if not as_json and not all(_one_line(v) for v in keys.values()):
        as_json = True
    body, content_type = _encode(keys, as_json)
    return Bad(body, content_type, says)


def _one_line(value: str) -> bool:
    """Whether text encoding can carry ``value`` as it is."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\n" not in value


def _not_a_json_object(data: bytes) -> bool:
    """Junk for a JSON body (an empty body is no keys, not junk)."""
    if not data.strip():
        return False
    try:
        return not isinstance(json.loads(data), dict)
    except ValueError:
        return True


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


DRIVE_KEYS = frozenset(
    {
        *("name", "size", "claim:type", "readers", "tags", "drive", "user", "status"),
        *("claimed", "imaging", "read:bytes", "read:requests", "write:bytes", "write:requests"),
    }
)
DRIVE_VALUES = {
    "name": bad_names,
    "size": bad_sizes,
    "readers": bad_uuid_lists,
    "tags": long_tags,
    "claim:type": any_values.filter(lambda v: v.strip() not in ("exclusive", "shared")),
    "user:note": bad_meta,
}
RESOURCE_KEYS = frozenset(
    {"name", "tags", "resource", "type", "user", "netmask", "gateway", "nameserver"}
)
RESOURCE_VALUES = {"name": bad_names, "tags": long_tags | bad_meta, "user:note": bad_meta}
QUOTA = ("quota:drive:bytes", "quota:servers", "quota:cpu", "quota:mem")
QUOTA_VALUES = {
    "quota:drive:bytes": bad_sizes.filter(
        lambda v: v.strip() not in ("0", "0k", "65T") and v.strip().lower() != "none"
    ),
    "quota:servers": bad_counts,
    "quota:cpu": bad_counts,
    "quota:mem": bad_counts,
}


def _changes_nothing(
    state: Callable[[], Any], client: httpx.Client, path: str, bad: Bad
) -> httpx.Response:
    before = state()
    r = bad.send(client, path)
    assert state() == before
    return r


@SETTINGS
@given(bad=bad_bodies({"name": "new", "size": "1M"}, DRIVE_KEYS, DRIVE_VALUES))
def test_drive_create(owner: Owner, bad: Bad) -> None:
    r = _changes_nothing(lambda: _state(owner.client), owner.client, "/drives/create", bad)
    _refused(r, 400, "usage", bad.says)


@SETTINGS
@given(bad=bad_bodies({"name": "renamed"}, DRIVE_KEYS, DRIVE_VALUES))
def test_drive_set(owner: Owner, bad: Bad) -> None:
    path = f"/drives/{owner.drive}/set"
    r = _changes_nothing(lambda: _state(owner.client), owner.client, path, bad)
    _refused(r, 400, "usage", bad.says)


@SETTINGS
@given(
    bad=bad_bodies({"name": "new"}, RESOURCE_KEYS, RESOURCE_VALUES),
    rtype=st.sampled_from(["ip", "vlan"]),
)
def test_resource_create(owner: Owner, bad: Bad, rtype: str) -> None:
    path = f"/resources/{rtype}/create"
    r = _changes_nothing(lambda: _state(owner.client), owner.client, path, bad)
    _refused(r, 400, "usage", bad.says)


@SETTINGS
@given(
    bad=bad_bodies({"tags": "t"}, RESOURCE_KEYS, RESOURCE_VALUES),
    rtype=st.sampled_from(["ip", "vlan"]),
)
def test_resource_set(owner: Owner, bad: Bad, rtype: str) -> None:
    path = f"/resources/{rtype}/{owner.ip if rtype == 'ip' else owner.vlan}/set"
    r = _changes_nothing(lambda: _state(owner.client), owner.client, path, bad)
    _refused(r, 400, "usage", bad.says)


@SETTINGS
@given(
    bad=bad_bodies(
        {"name": "someone"},
        frozenset(["name", "admin", *QUOTA]),
        {"name": bad_names, "admin": bad_bools, **QUOTA_VALUES},
    )
)
def test_user_create(root: httpx.Client, bad: Bad) -> None:
    r = _changes_nothing(lambda: _users(root), root, "/users/create", bad)
    _refused(r, 400, "usage", bad.says)


@SETTINGS
@given(
    bad=bad_bodies({"quota:mem": "512"}, frozenset([*QUOTA, "user", "name", "admin"]), QUOTA_VALUES)
)
def test_user_set(root: httpx.Client, victim: str, bad: Bad) -> None:
    r = _changes_nothing(lambda: _users(root), root, f"/users/{victim}/set", bad)
    _refused(r, 400, "usage", bad.says)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"admin false\n", "missing key name"),
        (b"name x\nadmin maybe\n", "admin"),
        (b"name x\nname y\n", "name given twice"),
    ],
)
def test_user_create_refusals(root: httpx.Client, body: bytes, says: str) -> None:
    r = _changes_nothing(lambda: _users(root), root, "/users/create", Bad(body, None, says))
    _refused(r, 400, "usage", says)


def test_user_set_refuses_changing_what_set_cannot(root: httpx.Client, victim: str) -> None:
    info = _info(root.get(f"/users/{victim}/info"))
    # Echoing info back unchanged is fine (and changes nothing)...
    echo = "".join(f"{k} {v}\n" for k, v in info.items()).encode()
    assert _info(root.post(f"/users/{victim}/set", content=echo)) == info
    # ...changing what only create sets is refused, naming the key.
    for key, value in (("admin", "true"), ("name", "other"), ("user", str(uuid.uuid4()))):
        bad = Bad(f"{key} {value}\n".encode(), None, f"{key} cannot be changed")
        r = _changes_nothing(lambda: _users(root), root, f"/users/{victim}/set", bad)
        _refused(r, 400, "usage", bad.says)


# -- huge bodies, wrong methods -------------------------------------------


def _change_paths(owner: Owner, victim: str) -> list[tuple[str, bool]]:
    """(path, needs admin) for every call that takes keys."""
    return [
        ("/drives/create", False),
        (f"/drives/{owner.drive}/set", False),
        ("/resources/ip/create", False),
        ("/resources/vlan/create", False),
        (f"/resources/ip/{owner.ip}/set", False),
        (f"/resources/vlan/{owner.vlan}/set", False),
        ("/users/create", True),
        (f"/users/{victim}/set", True),
    ]


@pytest.mark.parametrize("chunked", [False, True])
def test_huge_bodies(owner: Owner, root: httpx.Client, victim: str, chunked: bool) -> None:
    line = b"user:pad " + b"x" * 1000 + b"\n"

    def body() -> Iterator[bytes]:
        for i in range(3000):  # about 3 MB, three times the limit
            yield line.replace(b"user:pad", b"user:p%d" % i)

    for path, needs_admin in _change_paths(owner, victim):
        client = root if needs_admin else owner.client
        before = (_state(owner.client), _users(root))
        content = body() if chunked else b"".join(body())
        r = client.post(path, content=content)
        _refused(r, 400, "usage", "larger than")
        assert (_state(owner.client), _users(root)) == before


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_methods(owner: Owner, root: httpx.Client, victim: str, method: str) -> None:
    paths = [p for p, _ in _change_paths(owner, victim)] + [
        f"/drives/{owner.drive}/destroy",
        f"/drives/{owner.drive}/write",
        f"/drives/{owner.drive}/image/{owner.drive}",
        f"/resources/ip/{owner.ip}/destroy",
        f"/resources/vlan/{owner.vlan}/destroy",
        f"/users/{victim}/destroy",
    ]
    before = (_state(owner.client), _users(root))
    for path in paths:
        client = root if path.startswith("/users/") else owner.client
        r = client.request(method, path, content=b"name x\n")
        _refused(r, 405, "method", path)
    assert (_state(owner.client), _users(root)) == before


# -- bad ids in paths ----------------------------------------------------------

segments = st.text(string.ascii_letters + string.digits + "-_.~", min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..") and not _is_uuid(s)
)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@settings(SETTINGS, max_examples=15)
@given(seg=segments)
def test_bad_drive_ids_in_paths(owner: Owner, seg: str) -> None:
    before = _state(owner.client)
    for method, path in [
        ("GET", f"/drives/{seg}/info"),
        ("POST", f"/drives/{seg}/set"),
        ("POST", f"/drives/{seg}/destroy"),
        ("POST", f"/drives/{seg}/image/{owner.drive}"),
        ("POST", f"/drives/{owner.drive}/image/{seg}"),
        ("GET", f"/drives/{seg}/read/0/512"),
        ("POST", f"/drives/{seg}/write"),
    ]:
        r = owner.client.request(method, path, content=b"name x\n")
        _refused(r, 400, "usage", "not a UUID")
    assert _state(owner.client) == before


@SETTINGS
@given(
    seg=segments
    | st.text(string.hexdigits + ":.", min_size=1, max_size=40).filter(lambda s: s.strip("."))
)
def test_bad_resource_ids_in_paths(owner: Owner, seg: str) -> None:
    before = _state(owner.client)
    for rtype, verb, method in [
        ("ip", "info", "GET"),
        ("ip", "set", "POST"),
        ("ip", "destroy", "POST"),
        ("vlan", "info", "GET"),
        ("vlan", "set", "POST"),
        ("vlan", "destroy", "POST"),
    ]:
        if (rtype == "ip" and _is_ip(seg)) or (rtype == "vlan" and _is_uuid(seg)):
            continue
        r = owner.client.request(method, f"/resources/{rtype}/{seg}/{verb}", content=b"tags x\n")
        _refused(r, 400, "usage", "not an IP address" if rtype == "ip" else "not a UUID")
    assert _state(owner.client) == before


@SETTINGS
@given(seg=segments)
def test_bad_user_ids_in_paths(root: httpx.Client, seg: str) -> None:
    before = _users(root)
    for method, verb in [("GET", "info"), ("POST", "set"), ("POST", "destroy")]:
        r = root.request(method, f"/users/{seg}/{verb}", content=b"quota:cpu 1\n")
        _refused(r, 400, "usage", "not a UUID")
    assert _users(root) == before


def test_unknown_resource_type(owner: Owner) -> None:
    for path in ("/resources/disk/list", "/resources/disk/create", "/resources/disk/x/info"):
        r = owner.client.post(path)
        _refused(r, 400, "usage", "unknown resource type 'disk'")


# -- other users' objects, and nobody's -------------------------------------


def _calls(drive: str, ip: str, vlan: str, own_drive: str) -> list[tuple[str, str, bytes]]:
    return [
        ("GET", f"/drives/{drive}/info", b""),
        ("POST", f"/drives/{drive}/set", b"name stolen\n"),
        ("POST", f"/drives/{drive}/destroy", b""),
        ("POST", f"/drives/{drive}/image/{own_drive}", b""),
        ("POST", f"/drives/{own_drive}/image/{drive}", b""),
        ("POST", f"/drives/{own_drive}/image/{drive}/gunzip", b""),
        ("GET", f"/drives/{drive}/read/0/512", b""),
        ("POST", f"/drives/{drive}/write", b"\xee" * 512),
        ("POST", f"/drives/{drive}/write/512", b"\xee" * 512),
        ("GET", f"/resources/ip/{ip}/info", b""),
        ("POST", f"/resources/ip/{ip}/set", b"name stolen\n"),
        ("POST", f"/resources/ip/{ip}/destroy", b""),
        ("GET", f"/resources/vlan/{vlan}/info", b""),
        ("POST", f"/resources/vlan/{vlan}/set", b"name stolen\n"),
        ("POST", f"/resources/vlan/{vlan}/destroy", b""),
    ]


def _own_drive(client: httpx.Client) -> str:
    drives = client.get("/drives/list").text.split()
    assert drives
    return drives[0]


def test_others_objects_are_missing(owner: Owner, stranger: httpx.Client) -> None:
    data_before = owner.client.get(f"/drives/{owner.drive}/read/0/1024").content
    before = _state(owner.client)
    mine = _own_drive(stranger)
    nobody = (str(uuid.uuid4()), NOBODYS_IP, str(uuid.uuid4()))
    theirs = _calls(owner.drive, owner.ip, owner.vlan, mine)
    absent = _calls(*nobody, mine)
    for (method, path, body), (_, path_absent, _) in zip(theirs, absent, strict=True):
        r = stranger.request(method, path, content=body)
        _refused(r, 404, "missing", "no ")
        # Exactly as if it did not exist: the same reply, ids aside.
        r_absent = stranger.request(method, path_absent, content=body)
        _refused(r_absent, 404, "missing", "no ")
        ids = (owner.drive, owner.ip, owner.vlan, *nobody)
        assert _without(r.text, ids) == _without(r_absent.text, ids), path
    assert _state(owner.client) == before
    assert owner.client.get(f"/drives/{owner.drive}/read/0/1024").content == data_before
    assert data_before == bytes(1024)
    seen = stranger.get("/drives/list").text + stranger.get("/resources/list").text
    assert not {owner.drive, owner.ip, owner.vlan} & set(seen.split())
    seen_json = json.dumps(_state(stranger))
    assert owner.drive not in seen_json and owner.vlan not in seen_json


def _without(text: str, ids: tuple[str, ...]) -> str:
    for i in ids:
        text = text.replace(i, "ID")
    return text


@settings(SETTINGS, max_examples=10)
@given(drive=st.uuids(), vlan=st.uuids(), upper=st.booleans())
def test_unknown_ids_are_missing(
    owner: Owner, drive: uuid.UUID, vlan: uuid.UUID, upper: bool
) -> None:
    d, v = (str(drive).upper(), str(vlan).upper()) if upper else (str(drive), str(vlan))
    before = _state(owner.client)
    for method, path, body in _calls(d, NOBODYS_IP, v, owner.drive):
        r = owner.client.request(method, path, content=body)
        _refused(r, 404, "missing", "no ")
    assert _state(owner.client) == before


def test_upper_case_ids_name_the_same_objects(owner: Owner, stranger: httpx.Client) -> None:
    for path in (
        f"/drives/{owner.drive.upper()}/info",
        f"/resources/vlan/{owner.vlan.upper()}/info",
    ):
        _refused(stranger.get(path), 404, "missing", "no ")
        assert owner.client.get(path).status_code == 200
