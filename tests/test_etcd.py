"""The etcd client against a real etcd (issue 7's coordination, first piece).

What failover will lean on: a key attached to a lease vanishes when the
lease is not renewed; of many racing creators of one key exactly one wins;
a watch from a read's revision misses no change; a dead endpoint is skipped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from cloud import free_port
from overcast.store.etcd import Etcd, EtcdError, LeaseLost, WatchEvent, prefix_end


@pytest.fixture
async def etcd(etcd_url: str) -> AsyncIterator[Etcd]:
    client = Etcd([etcd_url])
    try:
        yield client
    finally:
        await client.close()


def _prefix() -> str:
    return f"test/{uuid.uuid4().hex}/"


async def test_keys_round_trip_and_prefixes(etcd: Etcd) -> None:
    p = _prefix()
    await etcd.put(p + "a", "1")
    await etcd.put(p + "b", "ünïcode")
    await etcd.put(p[:-1] + "x", "outside")  # same start, not under the prefix
    found, revision = await etcd.get_prefix(p)
    assert [(kv.key, kv.value) for kv in found] == [(p + "a", "1"), (p + "b", "ünïcode")]
    assert revision >= max(kv.mod_revision for kv in found)
    assert (await etcd.get(p + "a")) is not None
    assert await etcd.delete(p + "a") == 1
    assert await etcd.get(p + "a") is None
    assert await etcd.delete(p + "a") == 0


async def test_lease_keys_vanish_when_not_renewed(etcd: Etcd) -> None:
    p = _prefix()
    lease = await etcd.grant(2)
    await etcd.put(p + "guest", "host-1", lease=lease)
    kv = await etcd.get(p + "guest")
    assert kv is not None and kv.lease == lease
    for _ in range(3):  # renewed: it stays past its TTL
        await asyncio.sleep(1)
        assert await etcd.keepalive(lease) == 2
    assert await etcd.get(p + "guest") is not None
    await asyncio.sleep(3.5)  # not renewed: gone (etcd checks expiry about every 500 ms)
    assert await etcd.get(p + "guest") is None
    with pytest.raises(LeaseLost):
        await etcd.keepalive(lease)


async def test_revoke_deletes_at_once(etcd: Etcd) -> None:
    p = _prefix()
    lease = await etcd.grant(60)
    await etcd.put(p + "k", "v", lease=lease)
    await etcd.revoke(lease)
    assert await etcd.get(p + "k") is None


async def test_one_of_many_racing_creators_wins(etcd: Etcd) -> None:
    key = _prefix() + "guest"
    wins = await asyncio.gather(*(etcd.put_if_absent(key, f"host-{i}") for i in range(20)))
    assert wins.count(True) == 1
    kv = await etcd.get(key)
    assert kv is not None and kv.value == f"host-{wins.index(True)}"
    assert not await etcd.delete_if(key, "someone-else")
    assert await etcd.delete_if(key, kv.value)
    assert await etcd.put_if_absent(key, "again")


async def test_watch_from_a_read_misses_nothing(etcd: Etcd) -> None:
    p = _prefix()
    await etcd.put(p + "before", "x")
    _, revision = await etcd.get_prefix(p)
    await etcd.put(p + "a", "1")  # after the read, before the watch starts
    seen: list[WatchEvent] = []

    async def watch() -> None:
        async for event in etcd.watch_prefix(p, revision + 1):
            seen.append(event)
            if len(seen) == 3:
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await etcd.put(p + "b", "2")
    await etcd.delete(p + "a")
    await asyncio.wait_for(task, 10)
    assert [(e.type, e.kv.key) for e in seen] == [
        ("put", p + "a"),
        ("put", p + "b"),
        ("delete", p + "a"),
    ]


async def test_a_dead_endpoint_is_skipped(etcd_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = Etcd([dead, etcd_url])
    try:
        key = _prefix() + "k"
        await client.put(key, "v")
        assert (await client.get(key)) is not None
    finally:
        await client.close()
    alone = Etcd([dead])
    try:
        with pytest.raises(EtcdError, match="no endpoint answered"):
            await alone.get("k")
    finally:
        await alone.close()


def test_prefix_end() -> None:
    assert prefix_end("overcast/guests/") == "overcast/guests0"
    with pytest.raises(ValueError):
        prefix_end("")
