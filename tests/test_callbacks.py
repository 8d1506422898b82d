"""Exit callbacks and the event feed, end to end on the session cloud.

A user gives ``callback:exit`` pointing at a receiver on 127.0.0.1 (the
test clouds allow loopback callbacks); guests end through the API; the
receiver checks each request with the ``standardwebhooks`` package and the
secret ``/user/info`` shows, as a user's own receiver would. The feed
(``/events/list``) is read with and without long-poll.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from standardwebhooks import Webhook

from cloud import Cloud, new_user
from receiver import Receiver
from test_servers import Servers, create, records, server_keys
from test_servers import servers as servers

JSON = {"accept": "application/json"}


def _secret(http: httpx.Client) -> str:
    r = http.get("/user/info", headers=JSON)
    assert r.status_code == 200, r.text
    secret: str = r.json()["callback:secret"]
    return secret


def _feed(http: httpx.Client, since: int = 0, wait: float = 0) -> tuple[list[dict[str, str]], int]:
    r = http.get("/events/list", params={"since": since, "wait": wait}, timeout=90)
    assert r.status_code == 200, r.text
    return records(r.text), int(r.headers["x-events-cursor"])


def test_exit_is_posted_signed_and_in_the_feed(
    user: httpx.Client, servers: Servers, receiver: Receiver
) -> None:
    hook = receiver.base + "/hook"
    server = servers.create(server_keys("hooked", callback_exit=hook))
    started = float(records(user.get(f"/servers/{server}/info").text)[0]["started"])
    assert user.post(f"/servers/{server}/stop").status_code == 204
    [body] = receiver.wait_acknowledged("/hook", 1)
    [hit] = [h for h in receiver.hits if h.path == "/hook"]
    # The receiver's check: the secret from /user/info verifies the request.
    assert Webhook(_secret(user)).verify(hit.body, hit.headers) == body
    assert body["type"] == "server.exit"
    assert body["seq"] == 1
    assert body["reason"] == "killed"
    assert isinstance(body["time"], float) and started <= body["time"] <= time.time()
    info = body["server"]
    assert isinstance(info, dict)
    assert info["server"] == server and info["name"] == "hooked"
    assert info["callback:exit"] == hook
    assert hit.headers["webhook-id"] == body["id"]

    events, cursor = _feed(user)
    [event] = [e for e in events if e["server"] == server]
    assert event["event"] == body["id"]
    assert event["type"] == "server.exit" and event["seq"] == "1"
    assert event["info:name"] == "hooked"
    assert int(event["cursor"]) == cursor
    assert _feed(user, since=cursor) == ([], cursor)


def test_rotated_secret_signs_the_next_callback(
    user: httpx.Client, servers: Servers, receiver: Receiver
) -> None:
    old = _secret(user)
    assert user.get("/user/callback/rotate").status_code == 405
    r = user.post("/user/callback/rotate", headers=JSON)
    assert r.status_code == 200, r.text
    new = r.json()["callback:secret"]
    assert new != old and new.startswith("whsec_") and _secret(user) == new
    server = servers.create(server_keys("rotated", callback_exit=receiver.base + "/rot"))
    assert user.post(f"/servers/{server}/stop").status_code == 204
    receiver.wait_acknowledged("/rot", 1)
    [hit] = [h for h in receiver.hits if h.path == "/rot"]
    Webhook(new).verify(hit.body, hit.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(hit.body, hit.headers)


def test_each_user_sees_own_events_and_admins_all(
    cloud: Cloud, user: httpx.Client, admin: httpx.Client, servers: Servers
) -> None:
    server = servers.create(server_keys("mine"))
    assert user.post(f"/servers/{server}/destroy").status_code == 204
    mine, _ = _feed(user)
    assert [e["server"] for e in mine] == [server]
    assert mine[0]["reason"] == "killed"
    with new_user(cloud, "other") as other:
        assert _feed(other)[0] == []
    everyone, _ = _feed(admin)
    assert server in {e["server"] for e in everyone}
    # The feed is ordered by cursor.
    cursors = [int(e["cursor"]) for e in everyone]
    assert cursors == sorted(cursors)


def test_long_poll_returns_when_an_event_comes(user: httpx.Client, servers: Servers) -> None:
    server = servers.create(server_keys("polled"))
    _, cursor = _feed(user)
    got: list[tuple[list[dict[str, str]], int]] = []
    waited: list[float] = []

    def poll() -> None:
        started = time.monotonic()
        got.append(_feed(user, since=cursor, wait=30))
        waited.append(time.monotonic() - started)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the poll did not wait"
    stopped = time.monotonic()
    assert user.post(f"/servers/{server}/stop").status_code == 204
    thread.join(30)
    assert not thread.is_alive()
    [(events, _)] = got
    assert [e["server"] for e in events] == [server]
    assert waited[0] >= 0.5
    # Woken by the event, not by the end of its wait.
    assert time.monotonic() - stopped < 2


def test_long_poll_with_nothing_waits_its_time(user: httpx.Client) -> None:
    started = time.monotonic()
    events, cursor = _feed(user, since=0, wait=1)
    assert events == [] and cursor == 0
    assert 0.9 <= time.monotonic() - started < 5


@pytest.mark.parametrize(
    "query",
    [
        {"since": "-1"},
        {"since": "x"},
        {"since": "1e3"},
        {"wait": "61"},
        {"wait": "-1"},
        {"wait": "nan"},
        {"wait": "soon"},
    ],
)
def test_bad_feed_queries_are_refused(user: httpx.Client, query: dict[str, str]) -> None:
    r = user.get("/events/list", params=query)
    assert r.status_code == 400, r.text
    assert r.headers["x-elastic-error"] == "usage"


def test_feed_needs_credentials(cloud: Cloud) -> None:
    assert httpx.get(f"{cloud.url}/events/list").status_code == 401


def test_persistent_server_gets_one_event_per_run(
    user: httpx.Client, servers: Servers, receiver: Receiver
) -> None:
    keys = server_keys("again", callback_exit=receiver.base + "/runs", persistent="true")
    server = servers.create(keys)
    for _ in range(3):
        assert user.post(f"/servers/{server}/stop").status_code == 204
        assert user.post(f"/servers/{server}/start").status_code == 200
    assert user.post(f"/servers/{server}/stop").status_code == 204
    bodies = receiver.wait_acknowledged("/runs", 4)
    assert [b["seq"] for b in bodies] == [1, 2, 3, 4]
    assert len({b["id"] for b in bodies}) == 4


def test_create_checks_the_callback_url(user: httpx.Client) -> None:
    for bad in ["ftp://127.0.0.1/x", "http://", "not a url", "http://[::1"]:
        r = user.post("/servers/create", content=f"name x\ncpu 500\nmem 64\ncallback:exit {bad}\n")
        assert r.status_code == 400, (bad, r.text)
        assert r.headers["x-elastic-error"] == "usage"
    assert user.get("/servers/list").text == ""


def test_create_returns_after_the_guest_runs_even_with_a_callback(
    user: httpx.Client, servers: Servers, receiver: Receiver
) -> None:
    """A callback changes nothing about create: the reply still means running."""
    server = create(user, server_keys("plain", callback_exit=receiver.base + "/x"))
    servers.made.append(server)
    info = records(user.get(f"/servers/{server}/info").text)[0]
    assert info["status"] == "active" and info["callback:exit"] == receiver.base + "/x"
