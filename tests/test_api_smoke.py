"""The API's plumbing seen from a client: auth, methods, negotiation, ids."""

from __future__ import annotations

import httpx

from cloud import Cloud


def test_missing_credentials_are_401_auth(cloud: Cloud) -> None:
    r = httpx.get(f"{cloud.url}/drives/list")
    assert r.status_code == 401
    assert r.headers["x-elastic-error"] == "auth"


def test_wrong_key_is_401(cloud: Cloud) -> None:
    r = httpx.get(f"{cloud.url}/drives/list", auth=(cloud.admin_uuid, "wrong"))
    assert r.status_code == 401
    assert r.headers["x-elastic-error"] == "auth"


def test_get_on_a_change_is_405_method(user: httpx.Client) -> None:
    r = user.get("/drives/create")
    assert r.status_code == 405
    assert r.headers["x-elastic-error"] == "method"
    assert user.get("/drives/list").status_code == 200
    assert user.post("/drives/list").status_code == 200


def test_unknown_command_is_404_missing(user: httpx.Client) -> None:
    r = user.post("/drives/frobnicate/now")
    assert r.status_code == 404
    assert r.headers["x-elastic-error"] == "missing"


def test_every_reply_has_a_request_id(user: httpx.Client) -> None:
    ids = {user.get("/drives/list").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_json_in_text_out_and_back(user: httpx.Client) -> None:
    r = user.post("/drives/create", json={"name": "j", "size": 1048576})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    info = dict(line.split(" ", 1) for line in r.text.splitlines())
    assert info["size"] == "1048576"
    r = user.post(
        f"/drives/{info['drive']}/info",
        content="",
        headers={"Accept": "application/json"},
    )
    assert r.headers["content-type"] == "application/json"
    assert r.json()["size"] == 1048576
