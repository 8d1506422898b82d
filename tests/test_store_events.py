"""The outbox's rows on SQLite and PostgreSQL.

Per-server numbering inside the appending transaction (and none left by a
rolled back one), the feed's cursor and per-user filter, and the delivery
queue: due times, per-(server, URL) order, delivered and abandoned rows.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy.exc import IntegrityError

from overcast.store import Store
from overcast.store import events as outbox
from overcast.store.tables import events as events_table


async def _append(
    store: Store,
    server: str,
    *,
    user: str = "u1",
    callback: str | None = "http://127.0.0.1:9/hook",
    at: float = 1000.0,
) -> outbox.Event:
    async with store.write() as tx:
        return await outbox.append_event(
            tx,
            type="server.exit",
            user=user,
            server=server,
            reason="poweroff",
            at=at,
            body={"server": server, "status": "stopped"},
            callback=callback,
        )


async def test_seq_counts_per_server_and_round_trips(store: Store) -> None:
    a1 = await _append(store, "a")
    b1 = await _append(store, "b")
    a2 = await _append(store, "a", at=1001.5)
    assert (a1.seq, b1.seq, a2.seq) == (1, 1, 2)
    assert a1.id < b1.id < a2.id
    assert len({a1.uuid, b1.uuid, a2.uuid}) == 3
    async with store.read() as tx:
        got = await outbox.events_after(tx, None, 0, 10)
    assert got == [a1, b1, a2]
    assert got[2].at == 1001.5
    assert got[2].body == {"server": "a", "status": "stopped"}


async def test_rolled_back_event_leaves_nothing(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.write() as tx:
            await outbox.append_event(
                tx,
                type="server.exit",
                user="u1",
                server="a",
                reason="stop",
                at=1.0,
                body={},
                callback="http://127.0.0.1:9/",
            )
            raise Boom
    async with store.read() as tx:
        assert await outbox.events_after(tx, None, 0, 10) == []
        assert await outbox.due_deliveries(tx, 1e12, 10) == []
    assert (await _append(store, "a")).seq == 1


async def test_duplicate_seq_is_refused(store: Store) -> None:
    first = await _append(store, "a")
    with pytest.raises(IntegrityError):
        async with store.write() as tx:
            await tx.execute(
                events_table.insert().values(
                    uuid="x" * 36,
                    type="server.exit",
                    user="u1",
                    server="a",
                    seq=first.seq,
                    reason="r",
                    at=0.0,
                    body={},
                )
            )


async def test_feed_cursor_limit_and_user(store: Store) -> None:
    e = [await _append(store, f"s{i}", user="u1" if i % 2 else "u2") for i in range(6)]
    async with store.read() as tx:
        assert await outbox.events_after(tx, None, e[1].id, 2) == e[2:4]
        assert await outbox.events_after(tx, "u1", 0, 10) == [e[1], e[3], e[5]]
        assert await outbox.events_after(tx, "u2", e[2].id, 10) == [e[4]]
        assert await outbox.events_after(tx, "u1", e[5].id, 10) == []


async def test_no_callback_no_delivery(store: Store) -> None:
    await _append(store, "a", callback=None)
    async with store.read() as tx:
        assert len(await outbox.events_after(tx, None, 0, 10)) == 1
        assert await outbox.due_deliveries(tx, 1e12, 10) == []


async def test_due_deliveries_keep_per_server_order(store: Store) -> None:
    a1 = await _append(store, "a")
    a2 = await _append(store, "a")
    b1 = await _append(store, "b")
    other = await _append(store, "a", callback="http://127.0.0.1:9/other")
    async with store.read() as tx:
        due = await outbox.due_deliveries(tx, 1e12, 10)
    # a2 waits for a1 on the same URL; the other URL has its own order.
    assert {d.event.id for d in due} == {a1.id, b1.id, other.id}
    assert all(d.attempts == 0 and d.delivered_at is None for d in due)

    async with store.write() as tx:
        await outbox.mark_failed(tx, a1.id, 1e12 + 50, "HTTP 500")
    async with store.read() as tx:
        due = await outbox.due_deliveries(tx, 1e12, 10)
        later = await outbox.due_deliveries(tx, 1e12 + 60, 10)
        row = await outbox.get_delivery(tx, a1.id)
    assert {d.event.id for d in due} == {b1.id, other.id}
    assert {d.event.id for d in later} == {a1.id, b1.id, other.id}
    assert row is not None and row.attempts == 1 and row.last_error == "HTTP 500"

    async with store.write() as tx:
        await outbox.mark_delivered(tx, a1.id, 5.0)
    async with store.read() as tx:
        due = await outbox.due_deliveries(tx, 1e12 + 60, 10)
        row = await outbox.get_delivery(tx, a1.id)
    assert {d.event.id for d in due} == {a2.id, b1.id, other.id}
    assert row is not None and row.delivered_at == 5.0 and row.attempts == 2


async def test_abandoned_delivery_unblocks_the_next(store: Store) -> None:
    a1 = await _append(store, "a")
    a2 = await _append(store, "a")
    async with store.write() as tx:
        await outbox.mark_failed(tx, a1.id, None, "gave up")
    async with store.read() as tx:
        due = await outbox.due_deliveries(tx, 1e12, 10)
        row = await outbox.get_delivery(tx, a1.id)
    assert [d.event.id for d in due] == [a2.id]
    assert row is not None and row.abandoned_at is not None


async def test_due_order_and_limit(store: Store) -> None:
    ids = [(await _append(store, f"s{i}")).id for i in range(4)]
    async with store.write() as tx:
        await outbox.mark_failed(tx, ids[0], 10.0, "x")
    async with store.read() as tx:
        due = await outbox.due_deliveries(tx, 1e12, 2)
    assert [d.event.id for d in due] == [ids[0], ids[1]]


async def test_a_cursor_reader_never_skips_an_event(store: Store) -> None:
    """Writers append while holding their transactions open a while, in
    random order; a reader following the cursor must still see every event.
    (On PostgreSQL ids are taken at insert and seen at commit: without the
    append lock a later id could commit first and the cursor pass the
    earlier one.)"""

    async def writer(n: int) -> int:
        async with store.write() as tx:
            event = await outbox.append_event(
                tx,
                type="server.exit",
                user="u1",
                server=f"w{n}",
                reason="poweroff",
                at=1.0,
                body={},
                callback=None,
            )
            await asyncio.sleep(random.uniform(0, 0.02))
        return event.id

    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            async with store.read() as tx:
                found = await outbox.events_after(tx, None, cursor, 1000)
            seen.extend(e.id for e in found)
            if found:
                cursor = found[-1].id
            elif finished:
                return
            await asyncio.sleep(0.001)

    reading = asyncio.create_task(reader())
    ids = await asyncio.gather(*(writer(n) for n in range(40)))
    done.set()
    await reading
    assert sorted(seen) == sorted(ids)
