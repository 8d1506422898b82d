"""A guest's end writes its ``server.exit`` event to the outbox.

On the session cloud (real QEMU): ``stop`` ends a non-persistent server and
the same transaction appends one event with the server's last info and its
``callback:exit``, due for delivery. Read from the cloud's SQLite store.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from cloud import Cloud
from overcast.store import Store
from overcast.store import events as rows
from test_servers import Servers, new_drive, server_keys
from test_servers import servers as servers


async def _outbox(cloud: Cloud, server: str) -> list[tuple[rows.Event, rows.Delivery | None]]:
    store = Store(f"sqlite:///{cloud.data / 'overcast.db'}")
    try:
        async with store.read() as tx:
            events = await rows.events_after(tx, None, 0, 100_000)
            return [(e, await rows.get_delivery(tx, e.id)) for e in events if e.server == server]
    finally:
        await store.close()


def test_stop_appends_exit_event(cloud: Cloud, user: httpx.Client, servers: Servers) -> None:
    hook = "http://127.0.0.1:9/exit-hook"
    drive = new_drive(user)
    server = servers.create(server_keys("exit-event", drive, callback_exit=hook))
    assert asyncio.run(_outbox(cloud, server)) == []
    before = time.time()
    r = user.post(f"/servers/{server}/stop")
    assert r.status_code == 204, r.text
    [(event, delivery)] = asyncio.run(_outbox(cloud, server))
    assert event.type == "server.exit"
    assert event.seq == 1
    assert event.callback == hook
    assert event.body["server"] == server
    assert event.body["name"] == "exit-event"
    assert event.body["callback:exit"] == hook
    assert before - 5 <= event.at <= time.time() + 1
    assert event.reason
    assert delivery is not None and delivery.url == hook and delivery.delivered_at is None
    # A second stop finds nothing to end and appends nothing.
    assert user.post(f"/servers/{server}/stop").status_code == 404
    assert len(asyncio.run(_outbox(cloud, server))) == 1
