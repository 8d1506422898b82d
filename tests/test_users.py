"""Users: ``/user/info`` for oneself, ``/users/…`` for admins only, quotas,
and the secret key that is shown once and stored only as a digest.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import uuid
from collections.abc import Iterator

import httpx
import pytest

from cloud import Cloud

JSON = {"Accept": "application/json"}
QUOTA_KEYS = ("quota:drive:bytes", "quota:servers", "quota:cpu", "quota:mem")


def _info(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return dict(line.split(" ", 1) for line in r.text.splitlines())


def _refused(r: httpx.Response, status: int, kind: str, says: str = "") -> None:
    assert (r.status_code, r.headers.get("x-elastic-error")) == (status, kind), r.text
    assert says in r.text


@pytest.fixture
def made(admin: httpx.Client) -> Iterator[dict[str, str]]:
    """A user made by the admin: the create reply, secret included."""
    info = _info(admin.post("/users/create", content="name made by admin\n"))
    yield info
    admin.post(f"/users/{info['user']}/destroy")


def test_user_info_for_oneself(user: httpx.Client) -> None:
    info = _info(user.get("/user/info"))
    assert set(info) == {"user", "name", "admin", "callback:secret", *QUOTA_KEYS}
    assert info["callback:secret"].startswith("whsec_")
    assert uuid.UUID(info["user"]) and info["user"] == info["user"].lower()
    assert (info["name"], info["admin"]) == ("tester", "false")
    assert all(info[k] == "none" for k in QUOTA_KEYS)
    assert "secret" not in info
    assert user.post("/user/info", headers=JSON).json() == info


def test_create_shows_the_secret_once(
    cloud: Cloud, admin: httpx.Client, made: dict[str, str]
) -> None:
    assert set(made) == {"user", "name", "admin", *QUOTA_KEYS, "secret"}
    assert (made["name"], made["admin"]) == ("made by admin", "false")
    assert len(made["secret"]) >= 32
    with cloud.client(made["user"], made["secret"]) as client:
        assert _info(client.get("/user/info"))["user"] == made["user"]
    # Never again: not in info, not in the list of everyone.
    info = _info(admin.get(f"/users/{made['user']}/info"))
    assert "secret" not in info
    everyone = admin.get("/users/info", headers=JSON).json()
    assert made["secret"] not in str(everyone)
    assert made["user"] in admin.get("/users/list").text.split()
    assert {"user": made["user"]} in admin.get("/users/list", headers=JSON).json()
    assert [u for u in everyone if u["user"] == made["user"]] == [
        {**info, **{k: "none" for k in QUOTA_KEYS}}
    ]


def test_create_admin_and_with_quota(cloud: Cloud, admin: httpx.Client) -> None:
    made = admin.post(
        "/users/create",
        json={"name": "second admin", "admin": True, "quota:servers": 2},
        headers=JSON,
    ).json()
    try:
        assert (made["admin"], made["quota:servers"], made["quota:cpu"]) == ("true", 2, "none")
        with cloud.client(made["user"], made["secret"]) as client:
            assert client.get("/users/list").status_code == 200
    finally:
        assert admin.post(f"/users/{made['user']}/destroy").status_code == 204


def test_set_quota(cloud: Cloud, admin: httpx.Client, made: dict[str, str]) -> None:
    path = f"/users/{made['user']}"
    info = _info(
        admin.post(
            f"{path}/set",
            content="quota:drive:bytes 1M\nquota:servers 2\nquota:cpu 4000\nquota:mem 2048\n",
        )
    )
    assert [info[k] for k in QUOTA_KEYS] == [str(1 << 20), "2", "4000", "2048"]
    assert _info(admin.get(f"{path}/info")) == info
    # The owner sees the limits, and they hold.
    with cloud.client(made["user"], made["secret"]) as client:
        assert _info(client.get("/user/info"))["quota:drive:bytes"] == str(1 << 20)
        assert client.post("/drives/create", content="name a\nsize 768k\n").status_code == 200
        r = client.post("/drives/create", content="name b\nsize 512k\n")
        _refused(r, 402, "billing", "quota:drive:bytes")
        assert len(client.get("/drives/list").text.split()) == 1
        # ``none`` lifts a limit; the others stay.
        info = _info(admin.post(f"{path}/set", json={"quota:drive:bytes": "none"}))
        assert [info[k] for k in QUOTA_KEYS] == ["none", "2", "4000", "2048"]
        assert client.post("/drives/create", content="name b\nsize 512k\n").status_code == 200
        # Zero is a limit too: no more drives at all.
        admin.post(f"{path}/set", content="quota:drive:bytes 0\n").raise_for_status()
        _refused(client.post("/drives/create", content="name c\nsize 1k\n"), 402, "billing")
        for drive in client.get("/drives/list").text.split():
            assert client.post(f"/drives/{drive}/destroy").status_code == 204


def test_set_quota_refusals_name_the_key(admin: httpx.Client, made: dict[str, str]) -> None:
    path = f"/users/{made['user']}/set"
    for body, says in [
        ("quota:cpu -1\n", "quota:cpu"),
        ("quota:mem lots\n", "quota:mem"),
        ("quota:drive:bytes 1.5G\n", "quota:drive:bytes"),
        ("quota:disks 3\n", "unknown key quota:disks"),
    ]:
        _refused(admin.post(path, content=body), 400, "usage", says)
    assert all(_info(admin.get(f"/users/{made['user']}/info"))[k] == "none" for k in QUOTA_KEYS)


def test_destroy_refused_while_the_user_owns_objects(
    cloud: Cloud, admin: httpx.Client, made: dict[str, str]
) -> None:
    path = f"/users/{made['user']}"
    with cloud.client(made["user"], made["secret"]) as client:
        drive = _info(client.post("/drives/create", content="name keep\nsize 4k\n"))["drive"]
        vlan = _info(client.post("/resources/vlan/create"))["resource"]
        r = admin.post(f"{path}/destroy")
        _refused(r, 409, "busy", "drives")
        assert "vlans" in r.text
        assert _info(admin.get(f"{path}/info"))["user"] == made["user"]
        assert client.post(f"/drives/{drive}/destroy").status_code == 204
        _refused(admin.post(f"{path}/destroy"), 409, "busy", "vlans")
        assert client.post(f"/resources/vlan/{vlan}/destroy").status_code == 204
        # Upper case names the same user (and once deleted it is gone).
        assert (
            admin.post(f"{path.upper().replace('/USERS/', '/users/')}/destroy").status_code == 204
        )
        _refused(client.get("/user/info"), 401, "auth")
    _refused(admin.get(f"{path}/info"), 404, "missing", made["user"])
    _refused(admin.post(f"{path}/destroy"), 404, "missing")
    assert made["user"] not in admin.get("/users/list").text


def test_admin_cannot_destroy_themselves(cloud: Cloud, admin: httpx.Client) -> None:
    _refused(admin.post(f"/users/{cloud.admin_uuid}/destroy"), 400, "usage", "own user")
    _refused(admin.post(f"/users/{cloud.admin_uuid.upper()}/destroy"), 400, "usage", "own user")
    assert _info(admin.get("/user/info"))["admin"] == "true"


def test_users_calls_are_missing_for_non_admins(
    user: httpx.Client, admin: httpx.Client, made: dict[str, str]
) -> None:
    before = admin.get("/users/info", headers=JSON).json()
    u = made["user"]
    for method in ("GET", "POST"):
        for path in (
            "/users/list",
            "/users/info",
            "/users/create",
            f"/users/{u}/info",
            f"/users/{u}/set",
            f"/users/{u}/destroy",
            "/users/not-a-uuid/info",
        ):
            r = user.request(method, path, content=b"name x\nquota:cpu 1\n")
            _refused(r, 404, "missing", "no such command")
            # The same reply as a command that does not exist at all.
            assert r.text == f"no such command {path}\n"
    assert admin.get("/users/info", headers=JSON).json() == before


def test_admin_gets_405_for_a_get_on_a_change(admin: httpx.Client, made: dict[str, str]) -> None:
    for path in ("/users/create", f"/users/{made['user']}/set", f"/users/{made['user']}/destroy"):
        _refused(admin.get(path), 405, "method", path)
    assert _info(admin.get(f"/users/{made['user']}/info"))["user"] == made["user"]


def test_the_key_is_stored_only_as_a_digest(cloud: Cloud, made: dict[str, str]) -> None:
    secret = made["secret"]
    db = cloud.data / "overcast.db"
    # Raw bytes first: not in the database file nor its write-ahead log.
    for path in db.parent.glob("overcast.db*"):
        assert secret.encode() not in path.read_bytes(), path
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "users" in tables
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                assert not any(secret in str(value) for value in row), table
        (digest,) = conn.execute(
            "SELECT key_digest FROM users WHERE uuid = ?", (made["user"],)
        ).fetchone()
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert digest == hashlib.sha256(secret.encode()).hexdigest()
        digests = [r[0] for r in conn.execute("SELECT key_digest FROM users")]
        assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)
        assert len(set(digests)) == len(digests)
    finally:
        conn.close()
