"""Callback delivery against a real HTTP receiver on 127.0.0.1.

The receiver is ``http.server`` in a thread, scripted per path: answer
with a status, or hang. Signatures are checked with the
``standardwebhooks`` package, the reference a user's receiver would use.
Covers: a signed delivery; a 500 then a 200 (delivered on retry with the
same id); a hanging receiver timing out and retried while a second
receiver is served at once; per-server order kept across a failure; the
backoff's bounds.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from standardwebhooks import Webhook

from overcast.events.delivery import Deliverer, backoff
from overcast.store import Store
from overcast.store import events as rows
from receiver import Receiver, serve_receiver

SECRETS = {"alice": b"alice-secret-0123456789", "bob": b"bob-secret-9876543210"}


def _deliverer(store: Store, **kw: float) -> Deliverer:
    options: dict[str, float] = {"timeout": 2.0, "poll": 0.05, "first_retry": 0.05}
    options.update(kw)
    return Deliverer(store, SECRETS.__getitem__, **options)  # type: ignore[arg-type]


async def _record(store: Store, url: str, server: str = "srv-1", user: str = "alice") -> rows.Event:
    async with store.write() as tx:
        return await rows.append_event(
            tx,
            type="server.exit",
            user=user,
            server=server,
            reason="poweroff",
            at=1234.5,
            body={"server": server, "name": "web", "status": "stopped"},
            callback=url,
        )


async def _until_delivered(store: Store, ids: list[int], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with store.read() as tx:
            got = [await rows.get_delivery(tx, i) for i in ids]
        if all(d is not None and d.delivered_at is not None for d in got):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not delivered within {within}s: {got}")


async def test_delivers_signed_body(store: Store, receiver: Receiver) -> None:
    url = receiver.base + "/ok"
    event = await _record(store, url)
    deliverer = _deliverer(store)
    deliverer.start()
    try:
        await _until_delivered(store, [event.id])
    finally:
        await deliverer.stop()
    [hit] = receiver.hits
    assert hit.headers["webhook-id"] == event.uuid
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 30
    body = Webhook(SECRETS["alice"]).verify(hit.body, hit.headers)
    assert body == {
        "id": event.uuid,
        "type": "server.exit",
        "seq": 1,
        "reason": "poweroff",
        "time": 1234.5,
        "user": "alice",
        "server": {"server": "srv-1", "name": "web", "status": "stopped"},
    }
    # Someone else's secret does not verify it.
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRETS["bob"]).verify(hit.body, hit.headers)


async def test_500_then_200_is_retried_with_the_same_id(store: Store, receiver: Receiver) -> None:
    receiver.script["/flaky"] = [500, 503]
    event = await _record(store, receiver.base + "/flaky")
    deliverer = _deliverer(store)
    deliverer.start()
    try:
        await _until_delivered(store, [event.id])
    finally:
        await deliverer.stop()
    assert [h.status for h in receiver.hits] == [500, 503, 200]
    assert {h.headers["webhook-id"] for h in receiver.hits} == {event.uuid}
    assert {h.body for h in receiver.hits} == {receiver.hits[0].body}
    for hit in receiver.hits:
        Webhook(SECRETS["alice"]).verify(hit.body, hit.headers)
    async with store.read() as tx:
        row = await rows.get_delivery(tx, event.id)
    assert row is not None and row.attempts == 3 and row.last_error is None


async def test_hanging_receiver_times_out_and_does_not_delay_others(
    store: Store, receiver: Receiver
) -> None:
    receiver.script["/hang"] = ["hang"]
    slow = await _record(store, receiver.base + "/hang", server="srv-slow")
    deliverer = _deliverer(store, timeout=1.0)
    deliverer.start()
    try:
        # Let the hanging request start, then queue an event elsewhere.
        for _ in range(500):
            if receiver.hits:
                break
            await asyncio.sleep(0.01)
        assert receiver.hits, "the hanging receiver was never called"
        fast = await _record(store, receiver.base + "/fast", server="srv-fast", user="bob")
        started = time.monotonic()
        deliverer.wake()
        await _until_delivered(store, [fast.id], within=5)
        fast_took = time.monotonic() - started
        await _until_delivered(store, [slow.id], within=10)
    finally:
        await deliverer.stop()
    assert fast_took < 0.8, "the fast receiver waited for the hanging one"
    slow_hits = [h for h in receiver.hits if h.path == "/hang"]
    assert [h.status for h in slow_hits] == [None, 200]
    assert slow_hits[1].at - slow_hits[0].at >= 1.0
    assert {h.headers["webhook-id"] for h in slow_hits} == {slow.uuid}
    async with store.read() as tx:
        row = await rows.get_delivery(tx, slow.id)
    assert row is not None and row.attempts == 2


async def test_a_hanging_receiver_holds_only_its_share_of_slots(
    store: Store, receiver: Receiver
) -> None:
    """Four servers' events to a receiver that hangs, with four slots and
    two per receiver: another receiver is still served at once."""
    receiver.script["/hang"] = ["hang"] * 4
    stuck = [await _record(store, receiver.base + "/hang", server=f"s{i}") for i in range(4)]
    deliverer = _deliverer(store, timeout=3.0, concurrency=4, per_receiver=2)
    deliverer.start()
    try:
        for _ in range(500):
            if len(receiver.hits) >= 2:
                break
            await asyncio.sleep(0.01)
        with serve_receiver() as other:
            fast = await _record(store, other.base + "/fast", server="srv-fast")
            started = time.monotonic()
            deliverer.wake()
            await _until_delivered(store, [fast.id], within=5)
            took = time.monotonic() - started
        assert took < 1.5, "the other receiver waited for the hanging one"
        # Only two requests ever hung at once at the stuck receiver.
        assert len([h for h in receiver.hits if h.path == "/hang"]) == 2
        await _until_delivered(store, [e.id for e in stuck], within=30)
    finally:
        await deliverer.stop()


async def test_per_server_order_is_kept(store: Store, receiver: Receiver) -> None:
    url = receiver.base + "/ordered"
    receiver.script["/ordered"] = [500, 500]
    events = [await _record(store, url, server="srv-a") for _ in range(4)]
    other = await _record(store, receiver.base + "/other", server="srv-b")
    deliverer = _deliverer(store)
    deliverer.start()
    try:
        await _until_delivered(store, [e.id for e in [*events, other]])
    finally:
        await deliverer.stop()
    # srv-b's event is not held up behind srv-a's failures: it is acknowledged
    # before srv-a's first event gets through.
    paths = [(h.path, h.status) for h in receiver.hits]
    assert paths.index(("/other", 200)) < paths.index(("/ordered", 200)), paths
    # No event of srv-a is even sent before the previous one was acknowledged.
    acked: set[int] = set()
    for hit in receiver.hits:
        body = json.loads(hit.body)
        if body["server"]["server"] != "srv-a":
            continue
        assert set(range(1, body["seq"])) <= acked, (body["seq"], acked)
        if hit.status == 200:
            acked.add(body["seq"])
    got = [b["seq"] for b in receiver.acknowledged("/ordered") if b["server"]["server"] == "srv-a"]
    assert got == [1, 2, 3, 4]


async def test_gives_up_after_the_deadline(store: Store, receiver: Receiver) -> None:
    receiver.script["/dead"] = [500] * 100
    event = await _record(store, receiver.base + "/dead")
    deliverer = _deliverer(store, give_up_after=0.5)
    deliverer.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with store.read() as tx:
                row = await rows.get_delivery(tx, event.id)
            if row is not None and row.abandoned_at is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await deliverer.stop()
    assert row is not None and row.abandoned_at is not None and row.delivered_at is None
    assert row.attempts >= 2 and row.last_error == "HTTP 500"
    assert row.abandoned_at - row.created < 2.0


def test_backoff_doubles_with_jitter_and_cap() -> None:
    for attempts, top in [
        (1, 5.0),
        (2, 10.0),
        (3, 20.0),
        (10, 2560.0),
        (11, 3600.0),
        (500, 3600.0),
    ]:
        delays = [backoff(attempts, 5.0, 3600.0) for _ in range(200)]
        assert all(top / 2 <= d <= top for d in delays)
        assert len(set(delays)) > 1
