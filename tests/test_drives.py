"""The drive calls of API.md that handle records, end to end over HTTP.

create (size suffixes), list, info (one and all), set (every changeable key,
and size, which resizes the image with qemu-img), destroy; another user's
drive on every call; bad keys and values; the drive-bytes quota. Each call
is made in text and in JSON, input and output chosen independently.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, new_user

EVERYONE = "ffffffff-ffff-ffff-ffff-ffffffffffff"
ENCODINGS = [(False, False), (False, True), (True, False), (True, True)]
ENCODING_IDS = ["text-text", "text-json", "json-text", "json-json"]


def text_records(body: str) -> list[dict[str, str]]:
    """Objects of the text encoding: ``key value`` lines, blank-line separated."""
    records = []
    for block in body.strip("\n").split("\n\n"):
        if block:
            records.append(
                {k: v for k, _, v in (line.partition(" ") for line in block.split("\n"))}
            )
    return records


@dataclass
class Api:
    """One user's client speaking text or JSON, in and out independently."""

    http: httpx.Client
    json_in: bool = False
    json_out: bool = False

    def post(self, path: str, keys: Mapping[str, object] | None = None) -> httpx.Response:
        headers = {"Accept": "application/json"} if self.json_out else {}
        if keys is None:
            return self.http.post(path, headers=headers)
        if self.json_in:
            return self.http.post(path, json=dict(keys), headers=headers)
        body = "".join(f"{k} {v}\n" for k, v in keys.items())
        return self.http.post(path, content=body, headers={**headers, "Content-Type": "text/plain"})

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, headers={"Accept": "application/json"} if self.json_out else {})

    def records(self, r: httpx.Response) -> list[dict[str, str]]:
        """The reply's objects, values as text whatever the encoding.

        JSON replies are checked to carry numbers as JSON numbers.
        """
        assert r.status_code == 200, r.text
        if not self.json_out:
            assert r.headers["content-type"].startswith("text/plain")
            return text_records(r.text)
        assert r.headers["content-type"] == "application/json"
        data = r.json()
        objects = data if isinstance(data, list) else [data]
        for obj in objects:
            for key in ("size", "read:bytes", "read:requests", "write:bytes", "write:requests"):
                if key in obj:
                    assert isinstance(obj[key], int), (key, obj)
        return [{k: str(v) for k, v in obj.items()} for obj in objects]

    def record(self, r: httpx.Response) -> dict[str, str]:
        (one,) = self.records(r)
        return one

    def uuids(self, r: httpx.Response) -> list[str]:
        """A list reply: one UUID a line, or ``[{"drive": …}]``."""
        assert r.status_code == 200, r.text
        if self.json_out:
            return [obj["drive"] for obj in r.json()]
        return r.text.split()

    def create(self, name: str = "d", size: object = "1M", **more: object) -> dict[str, str]:
        return self.record(self.post("/drives/create", {"name": name, "size": size, **more}))


def user_uuid(http: httpx.Client) -> str:
    return text_records(http.get("/user/info").text)[0]["user"]


def assert_error(r: httpx.Response, status: int, kind: str, case: object = None) -> None:
    """An error reply of this status and kind (``case`` names it on failure)."""
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.headers["x-elastic-error"] == kind, case
    assert r.text.strip(), "an error names what is wrong"


def drive_files(cloud: Cloud) -> set[str]:
    """Drive images on disk (an imaging job's scratch copy is not one)."""
    return {f for f in os.listdir(cloud.data / "drives") if "." not in f}


def image_file(cloud: Cloud, uuid: str) -> Path:
    return cloud.data / "drives" / uuid


@pytest.fixture(params=ENCODINGS, ids=ENCODING_IDS)
def api(request: pytest.FixtureRequest, user: httpx.Client) -> Api:
    json_in, json_out = request.param
    return Api(user, json_in, json_out)


@pytest.fixture
def other(cloud: Cloud) -> Iterator[httpx.Client]:
    """A second user, a stranger to the first."""
    with new_user(cloud, "other") as client:
        yield client


# -- create ------------------------------------------------------------------


SIZES = [
    ("1k", 1 << 10),
    ("3K", 3 << 10),
    ("5M", 5 << 20),
    ("2G", 2 << 30),
    ("1T", 1 << 40),
    ("1048576", 1 << 20),
    # Not a whole number of sectors: kept exactly, as ElasticHosts did.
    ("10000000", 10_000_000),
]


def test_create_takes_size_suffixes(cloud: Cloud, api: Api) -> None:
    for size, expected in SIZES:
        info = api.create("sized", size)
        assert int(info["size"]) == expected, size
        assert image_file(cloud, info["drive"]).stat().st_size == expected
        assert int(api.record(api.post(f"/drives/{info['drive']}/info"))["size"]) == expected


def test_create_takes_json_numbers_and_strings(user: httpx.Client) -> None:
    api = Api(user, json_in=True, json_out=True)
    assert api.create("n", 2097152)["size"] == "2097152"
    assert api.create("s", "2k", tags=["a", "b"])["tags"] == "a b"


def test_create_list_info_set_destroy(cloud: Cloud, api: Api, other: httpx.Client) -> None:
    reader = user_uuid(other)
    info = api.create(
        "My Drive",
        "4M",
        tags="boot fast",
        readers=reader,
        **{"claim:type": "shared", "user:owner": "ops team", "user:Env.1": "x"},
    )
    d = info["drive"]
    assert info["name"] == "My Drive"
    assert info["status"] == "active"
    assert info["user"] == user_uuid(api.http)
    assert info["claim:type"] == "shared"
    assert info["tags"] == "boot fast"
    assert info["readers"] == reader
    assert info["user:owner"] == "ops team"
    assert info["user:Env.1"] == "x"
    assert "imaging" not in info and "claimed" not in info
    for key in ("read:bytes", "read:requests", "write:bytes", "write:requests"):
        assert info[key] == "0"

    second = api.create("second", "1k")
    assert api.uuids(api.post("/drives/list")) == [d, second["drive"]]
    assert api.uuids(api.get("/drives/list")) == [d, second["drive"]]
    assert api.record(api.post(f"/drives/{d}/info")) == info
    assert api.record(api.get(f"/drives/{d}/info")) == info
    everything = api.records(api.post("/drives/info"))
    assert [r["drive"] for r in everything] == [d, second["drive"]]
    assert everything[0] == info

    changed = api.record(
        api.post(
            f"/drives/{d}/set",
            {
                "name": "renamed",
                "tags": "slow",
                "readers": EVERYONE,
                "claim:type": "exclusive",
                "user:owner": "dev team",
                "user:new": "1",
            },
        )
    )
    assert changed["name"] == "renamed"
    assert changed["tags"] == "slow"
    assert changed["readers"] == EVERYONE
    assert changed["claim:type"] == "exclusive"
    # user:* keys merge: the ones not sent are kept.
    assert changed["user:owner"] == "dev team"
    assert changed["user:new"] == "1"
    assert changed["user:Env.1"] == "x"
    assert changed["size"] == "4194304"
    assert api.record(api.post(f"/drives/{d}/info")) == changed

    # Empty values clear lists.
    cleared = api.record(api.post(f"/drives/{d}/set", {"tags": "", "readers": ""}))
    assert "tags" not in cleared and "readers" not in cleared

    # A client may echo info back: the keys it cannot change are ignored.
    echoed = api.record(api.post(f"/drives/{d}/set", {**cleared, "name": "echo"}))
    assert echoed == {**cleared, "name": "echo"}

    assert drive_files(cloud) >= {d, second["drive"]}
    r = api.post(f"/drives/{d}/destroy")
    assert r.status_code == 204 and r.content == b""
    assert not image_file(cloud, d).exists()
    assert api.uuids(api.post("/drives/list")) == [second["drive"]]
    assert_error(api.post(f"/drives/{d}/info"), 404, "missing")
    assert_error(api.post(f"/drives/{d}/destroy"), 404, "missing")


def test_set_size_resizes_the_image(cloud: Cloud, api: Api) -> None:
    d = api.create("grow", "1M")["drive"]
    data = os.urandom(4096)
    assert api.http.post(f"/drives/{d}/write/1044480", content=data).status_code == 204

    grown = api.record(api.post(f"/drives/{d}/set", {"size": "3M"}))
    assert grown["size"] == str(3 << 20)
    assert image_file(cloud, d).stat().st_size == 3 << 20
    tail = api.http.get(f"/drives/{d}/read/1044480/8192").content
    assert tail == data + bytes(4096), "old data kept, the new part reads as zeros"

    shrunk = api.record(api.post(f"/drives/{d}/set", {"size": 1044480 + 100}))
    assert shrunk["size"] == str(1044580)
    assert image_file(cloud, d).stat().st_size == 1044580
    assert api.http.get(f"/drives/{d}/read/1044480/1M").content == data[:100]
    # The same size again changes nothing.
    assert api.record(api.post(f"/drives/{d}/set", {"size": "1044580"}))["size"] == "1044580"


def test_info_all_and_list_of_a_new_user_are_empty(api: Api) -> None:
    assert api.uuids(api.post("/drives/list")) == []
    assert api.records(api.post("/drives/info")) == []


def test_a_drive_the_storage_cannot_hold_fails_cleanly(cloud: Cloud, api: Api) -> None:
    """20 TiB is within the API's limit but past ext4's largest file (16 TiB)."""
    before = drive_files(cloud)
    r = api.post("/drives/create", {"name": "huge", "size": "20T"})
    if r.status_code == 200:
        api.post(f"/drives/{api.record(r)['drive']}/destroy")
        pytest.skip("this file system holds 20 TiB files")
    assert_error(r, 500, "failed")
    assert api.uuids(api.post("/drives/list")) == []
    assert drive_files(cloud) == before


# -- other users ----------------------------------------------------------------


def test_another_users_drive_is_404_on_every_call(user: httpx.Client, other: httpx.Client) -> None:
    mine = Api(user).create("mine")["drive"]
    theirs = Api(other).create("theirs")["drive"]
    for path in (
        f"/drives/{theirs}/info",
        f"/drives/{theirs}/set",
        f"/drives/{theirs}/destroy",
        f"/drives/{theirs}/image/{mine}",
        f"/drives/{theirs}/image/{mine}/gunzip",
        f"/drives/{mine}/image/{theirs}",
        f"/drives/{mine}/image/{theirs}/gunzip",
        f"/drives/{theirs}/read/0/512",
        f"/drives/{theirs}/write",
        f"/drives/{theirs}/write/0",
    ):
        assert_error(user.post(path, content=b"name x\n"), 404, "missing", path)
    assert_error(user.get(f"/drives/{theirs}/info"), 404, "missing")
    assert_error(user.get(f"/drives/{theirs}/read/0/512"), 404, "missing")
    # A drive that does not exist at all looks the same.
    assert_error(user.post("/drives/00000000-0000-4000-8000-000000000000/info"), 404, "missing")
    assert theirs not in user.get("/drives/list").text
    assert Api(other).record(Api(other).post(f"/drives/{theirs}/info"))["name"] == "theirs"


def test_readers_may_read_and_image_but_not_change(
    cloud: Cloud, user: httpx.Client, other: httpx.Client
) -> None:
    owner, stranger = Api(user), Api(other)
    shared = owner.create("shared", "64k", readers=user_uuid(other))["drive"]
    data = os.urandom(65536)
    assert user.post(f"/drives/{shared}/write", content=data).status_code == 204

    assert stranger.record(stranger.post(f"/drives/{shared}/info"))["drive"] == shared
    assert other.get(f"/drives/{shared}/read/0/64k").content == data
    copy = stranger.create("copy", "64k")["drive"]
    assert other.post(f"/drives/{copy}/image/{shared}").status_code == 204
    wait_imaged(stranger, copy)
    assert other.get(f"/drives/{copy}/read/0/64k").content == data

    for path in (f"/drives/{shared}/set", f"/drives/{shared}/destroy", f"/drives/{shared}/write"):
        assert_error(other.post(path, content=b"name stolen\n"), 404, "missing")
    assert_error(other.post(f"/drives/{shared}/image/{copy}"), 404, "missing")
    assert shared not in other.get("/drives/list").text
    assert user.get(f"/drives/{shared}/read/0/64k").content == data
    assert owner.record(owner.post(f"/drives/{shared}/info"))["name"] == "shared"

    # Everyone: a third user may read it too.
    owner.post(f"/drives/{shared}/set", {"readers": EVERYONE})
    with new_user(cloud, "third") as third:
        assert third.get(f"/drives/{shared}/read/0/16").content == data[:16]
        assert_error(third.post(f"/drives/{shared}/destroy"), 404, "missing")


def wait_imaged(api: Api, drive: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "imaging" in api.record(api.post(f"/drives/{drive}/info")):
        assert time.monotonic() < deadline, "imaging did not finish"
        time.sleep(0.02)


# -- bad input ----------------------------------------------------------------


BAD_CREATES: list[dict[str, str]] = [
    {"name": "x"},
    {"size": "1M"},
    {"name": "x", "size": "1M", "frobnicate": "yes"},
    {"name": "x", "size": "12X"},
    {"name": "x", "size": "-1"},
    {"name": "x", "size": "0"},
    {"name": "x", "size": "1.5G"},
    {"name": "x", "size": "65T"},
    {"name": "x", "size": ""},
    {"name": "", "size": "1M"},
    {"name": "x" * 256, "size": "1M"},
    {"name": "x", "size": "1M", "claim:type": "sometimes"},
    {"name": "x", "size": "1M", "readers": "not-a-uuid"},
    {"name": "x", "size": "1M", "tags": "t" * 65},
    {"name": "x", "size": "1M", "Name": "upper"},
    {"name": "x", "size": "1M", "user:": "empty suffix"},
]


def test_bad_create_is_400_and_creates_nothing(cloud: Cloud, api: Api) -> None:
    before = drive_files(cloud)
    for keys in BAD_CREATES:
        assert_error(api.post("/drives/create", keys), 400, "usage", keys)
    assert api.uuids(api.post("/drives/list")) == []
    assert drive_files(cloud) == before


BAD_SETS: list[dict[str, str]] = [
    {"frobnicate": "yes"},
    {"size": "huge"},
    {"size": "0"},
    {"name": "  "},
    {"claim:type": "nobody"},
    {"readers": "12345"},
    {"tags": "y" * 65},
]


def test_bad_set_is_400_and_changes_nothing(cloud: Cloud, api: Api) -> None:
    info = api.create("keep", "1M", tags="a")
    d = info["drive"]
    for keys in BAD_SETS:
        assert_error(api.post(f"/drives/{d}/set", keys), 400, "usage", keys)
    assert api.record(api.post(f"/drives/{d}/info")) == info
    assert image_file(cloud, d).stat().st_size == 1 << 20


MALFORMED: list[tuple[bytes, str]] = [
    (b"[1, 2]", "application/json"),
    (b"{not json", "application/json"),
    (b'{"name": {"nested": 1}, "size": "1M"}', "application/json"),
    (b'{"name": "x", "size": 1.5}', "application/json"),
    (b"\xff\xfe name x\n", "text/plain"),
    (b"name x\nsize 1M\nname y\n", "text/plain"),
]


def test_malformed_bodies_are_400(user: httpx.Client) -> None:
    for body, content_type in MALFORMED:
        r = user.post("/drives/create", content=body, headers={"Content-Type": content_type})
        assert_error(r, 400, "usage", body)
    assert user.get("/drives/list").text == ""


BAD_PATHS = [
    "/drives/not-a-uuid/info",
    "/drives/{d}/read/x/1",
    "/drives/{d}/read/0/0",
    "/drives/{d}/read/0/-5",
    "/drives/{d}/read/2M/1",
    "/drives/{d}/write/abc",
    "/drives/{d}/write/2M",
    "/drives/{d}/image/{d}",
]


def test_bad_paths_are_400(user: httpx.Client) -> None:
    d = Api(user).create("p", "1M")["drive"]
    for path in BAD_PATHS:
        assert_error(user.post(path.format(d=d), content=b"x"), 400, "usage", path)


def test_change_calls_need_post(user: httpx.Client) -> None:
    d = Api(user).create("m", "1M")["drive"]
    for path in (
        "/drives/create",
        f"/drives/{d}/set",
        f"/drives/{d}/destroy",
        f"/drives/{d}/write",
    ):
        assert_error(user.get(path), 405, "method")
    assert user.get(f"/drives/{d}/info").status_code == 200


# -- quota --------------------------------------------------------------------


def test_drive_quota_refuses_create_and_resize(cloud: Cloud, admin: httpx.Client, api: Api) -> None:
    me = user_uuid(api.http)
    r = admin.post(f"/users/{me}/set", content="quota:drive:bytes 3M\n")
    assert r.status_code == 200, r.text
    assert text_records(r.text)[0]["quota:drive:bytes"] == str(3 << 20)

    first = api.create("first", "2M")["drive"]
    before = drive_files(cloud)
    assert_error(api.post("/drives/create", {"name": "over", "size": "2M"}), 402, "billing")
    assert api.uuids(api.post("/drives/list")) == [first]
    assert drive_files(cloud) == before

    assert_error(api.post(f"/drives/{first}/set", {"size": "4M"}), 402, "billing")
    assert api.record(api.post(f"/drives/{first}/info"))["size"] == str(2 << 20)
    assert image_file(cloud, first).stat().st_size == 2 << 20

    # Up to the limit exactly is fine.
    second = api.create("exact", "1M")["drive"]
    assert api.uuids(api.post("/drives/list")) == [first, second]

    # Lowering the quota below use: no growth, but shrinking still works.
    admin.post(f"/users/{me}/set", content="quota:drive:bytes 1M\n").raise_for_status()
    assert_error(api.post(f"/drives/{second}/set", {"size": "2M"}), 402, "billing")
    assert api.record(api.post(f"/drives/{first}/set", {"size": "1M"}))["size"] == str(1 << 20)

    # Destroying frees quota; lifting the quota lifts the limit.
    assert api.post(f"/drives/{second}/destroy").status_code == 204
    admin.post(f"/users/{me}/set", content="quota:drive:bytes none\n").raise_for_status()
    assert api.create("big", "1T")["size"] == str(1 << 40)


def test_json_list_reply_is_an_array_of_objects(user: httpx.Client) -> None:
    d = Api(user).create("j")["drive"]
    r = user.get("/drives/list", headers={"Accept": "application/json"})
    assert json.loads(r.text) == [{"drive": d}]
