"""Hosts report exits to their manager through ``callback:exit`` (issue 5).

``POST /hosts/exits`` is the manager's end of it. Checked here: only admins
reach it and bad bodies change nothing; a report races the local agent's
in-process report of the same end and one event results; a report of an
earlier run is ignored; and the wire: a second cloud (standing in for a
host) delivers a guest's end to the session cloud through its own outbox,
authenticated by the admin credentials in the callback URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cloud import Cloud, start_cloud, stop_cloud
from overcast.store import Store
from overcast.store import events as rows
from test_servers import Servers, records, server_keys, the_qemu
from test_servers import servers as servers

JSON = {"accept": "application/json"}


def _report(server: str, started: float, reason: str = "killed") -> bytes:
    """A host's callback body, as its outbox writes it."""
    document = {
        "id": "4f1c0c6e-2a8e-4a37-9a54-5d1c3f2e9b10",
        "type": "server.exit",
        "seq": 1,
        "reason": reason,
        "time": time.time(),
        "user": "host-admin",
        "server": {"server": server, "started": int(started), "status": "active"},
    }
    return json.dumps(document).encode()


def _feed(http: httpx.Client) -> list[dict[str, str]]:
    r = http.get("/events/list")
    assert r.status_code == 200, r.text
    return records(r.text) if r.text.strip() else []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"type": "server.revive"}',
        b'{"type": "server.exit", "reason": "x", "time": 1}',
        b'{"type": "server.exit", "reason": "x", "time": "now", "server": {"server": "'
        + b"0" * 8
        + b'-0000-0000-0000-000000000000"}}',
        b'{"type": "server.exit", "reason": "", "time": 1, "server": {"server": "x"}}',
    ],
)
def test_bad_reports_are_refused(admin: httpx.Client, body: bytes) -> None:
    r = admin.post("/hosts/exits", content=body)
    assert r.status_code == 400, r.text
    assert r.headers["x-elastic-error"] == "usage"


def test_only_admins_post_reports(cloud: Cloud, user: httpx.Client, admin: httpx.Client) -> None:
    body = _report("00000000-0000-0000-0000-000000000000", time.time())
    assert user.post("/hosts/exits", content=body).status_code == 404
    assert httpx.post(f"{cloud.url}/hosts/exits", content=body).status_code == 401
    assert admin.get("/hosts/exits").status_code == 405
    # An unknown server: acknowledged, so a host's redelivery ends.
    assert admin.post("/hosts/exits", content=body).status_code == 204


def test_report_racing_the_local_agent_gives_one_event(
    cloud: Cloud, user: httpx.Client, admin: httpx.Client, servers: Servers
) -> None:
    server = servers.create(server_keys("raced"))
    started = float(records(user.get(f"/servers/{server}/info").text)[0]["started"])
    pid = the_qemu(cloud, server)
    answers: list[int] = []
    posted = threading.Thread(
        target=lambda: answers.append(
            admin.post("/hosts/exits", content=_report(server, started)).status_code
        )
    )
    os.kill(pid, signal.SIGKILL)
    posted.start()
    posted.join(30)
    assert answers == [204]
    deadline = time.monotonic() + 10
    while user.get(f"/servers/{server}/info").status_code != 404:
        assert time.monotonic() < deadline, "the server did not end"
        time.sleep(0.05)
    time.sleep(0.3)  # the slower of the two reports has been processed too
    assert [e["server"] for e in _feed(user)] == [server]


def test_report_of_an_earlier_run_is_ignored(
    user: httpx.Client, admin: httpx.Client, servers: Servers
) -> None:
    server = servers.create(server_keys("later", persistent="true"))
    started = float(records(user.get(f"/servers/{server}/info").text)[0]["started"])
    r = admin.post("/hosts/exits", content=_report(server, started - 3600))
    assert r.status_code == 204, r.text
    assert records(user.get(f"/servers/{server}/info").text)[0]["status"] == "active"
    assert _feed(user) == []


async def _delivered(data: Path, server: str) -> list[rows.Delivery]:
    store = Store(f"sqlite:///{data / 'overcast.db'}")
    try:
        async with store.read() as tx:
            events = await rows.events_after(tx, None, 0, 10_000)
            found = [await rows.get_delivery(tx, e.id) for e in events if e.server == server]
            return [d for d in found if d is not None]
    finally:
        await store.close()


def test_a_host_cloud_reports_through_its_outbox(cloud: Cloud, admin: httpx.Client) -> None:
    """The second cloud stands for a host: its admin's server calls back to
    the session cloud's ``/hosts/exits`` with that cloud's admin credentials
    in the URL. The manager does not know the server (no placement yet) and
    acknowledges; the host's outbox records the delivery as done."""
    port = urlsplit(cloud.url).port
    hook = f"http://{cloud.admin_uuid}:{cloud.admin_secret}@127.0.0.1:{port}/hosts/exits"
    with tempfile.TemporaryDirectory(prefix="och-", dir="/tmp") as tmp:
        host = start_cloud(Path(tmp) / "var")
        try:
            with host.admin_client() as h:
                r = h.post(
                    "/servers/create",
                    content=f"name on-host\ncpu 500\nmem 64\ncallback:exit {hook}\n",
                )
                assert r.status_code == 200, r.text
                server = records(r.text)[0]["server"]
                assert h.post(f"/servers/{server}/stop").status_code == 204
            deadline = time.monotonic() + 20
            while True:
                found = asyncio.run(_delivered(host.data, server))
                if found and found[0].delivered_at is not None:
                    break
                assert time.monotonic() < deadline, found
                time.sleep(0.1)
            assert found[0].attempts == 1 and found[0].last_error is None
        finally:
            stop_cloud(host)
    assert f"exit of server {server}: no such server" in cloud.log.read_text()


def test_admins_create_a_server_with_a_given_id(
    cloud: Cloud, admin: httpx.Client, user: httpx.Client
) -> None:
    """How a manager will create, on a host, the server it has numbered:
    ``/servers/S/create`` for admins; the id is taken once; to users the
    call does not exist."""
    given = "6f766572-6361-4573-a774-000000000001"
    body = "name numbered\ncpu 500\nmem 64\n"
    assert user.post(f"/servers/{given}/create", content=body).status_code == 404
    assert admin.get(f"/servers/{given}/create").status_code == 405
    r = admin.post(f"/servers/{given.upper()}/create", content=body)
    try:
        assert r.status_code == 200, r.text
        assert records(r.text)[0]["server"] == given
        assert records(r.text)[0]["status"] == "active"
        again = admin.post(f"/servers/{given}/create", content=body)
        assert again.status_code == 409 and "exists already" in again.text
        bad = admin.post("/servers/not-a-uuid/create", content=body)
        assert bad.status_code == 400 and bad.headers["x-elastic-error"] == "usage"
    finally:
        admin.post(f"/servers/{given}/destroy")
    assert admin.get(f"/servers/{given}/info").status_code == 404
