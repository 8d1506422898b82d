"""Transactions under failure and contention, on SQLite and PostgreSQL.

What the services rely on: a failed or cancelled write leaves nothing
behind, concurrent writes lose no update, a second process on the same
SQLite file (the CLI while the server runs) writes without "database is
locked", and uniqueness races end in :class:`IntegrityError`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import uuid as _uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from overcast.model.drive import Drive
from overcast.model.errors import QuotaError
from overcast.model.server import Server, ServerStatus
from overcast.model.user import Quota, User
from overcast.store import Store, migrate
from overcast.store import drives as drive_rows
from overcast.store import servers as server_rows
from overcast.store import users as user_rows
from overcast.store.tables import claims


async def add_user(store: Store) -> User:
    async with store.write() as conn:
        return await user_rows.insert_user(conn, "ann", _uuid.uuid4().hex * 2, admin=False)


async def add_drive(store: Store, user: User, size: int = 1 << 20) -> Drive:
    drive = Drive(uuid=str(_uuid.uuid4()), user=user.uuid, name="d", size=size)
    async with store.write() as conn:
        await drive_rows.insert_drive(conn, drive)
    return drive


async def counters(store: Store, uuid: str) -> tuple[int, int]:
    async with store.read() as conn:
        drive = await drive_rows.get_drive(conn, uuid)
    assert drive is not None
    return drive.read_bytes, drive.read_requests


async def add_server(store: Store, user: User) -> str:
    """A server for claims to name (a claim's server is a foreign key)."""
    config = {"name": "s", "cpu": "100", "mem": "64"}
    server = Server(str(_uuid.uuid4()), user.uuid, config, ServerStatus.ACTIVE, "local")
    async with store.write() as conn:
        await server_rows.insert_server(conn, server)
    return server.uuid


class Boom(Exception):
    pass


async def test_a_failed_write_rolls_back_fully(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    with pytest.raises(Boom):
        async with store.write() as conn:
            await drive_rows.add_io(conn, drive.uuid, read=10)
            await user_rows.set_quota(conn, ann.uuid, Quota(servers=1))
            await drive_rows.insert_drive(conn, Drive(str(_uuid.uuid4()), ann.uuid, "x", 1))
            await drive_rows.delete_drive(conn, drive.uuid)
            raise Boom
    async with store.read() as conn:
        assert await drive_rows.list_drives(conn, ann.uuid) == [drive]
        assert await user_rows.get_user(conn, ann.uuid) == ann


async def test_a_failed_statement_rolls_back_its_transaction(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await drive_rows.add_io(conn, drive.uuid, read=10)
            await drive_rows.insert_drive(conn, drive)  # the same uuid again
    assert await counters(store, drive.uuid) == (0, 0)
    async with store.write() as conn:  # and the connection is fine afterwards
        await drive_rows.add_io(conn, drive.uuid, read=1)
    assert await counters(store, drive.uuid) == (1, 1)


async def test_a_cancelled_write_rolls_back_and_frees_the_store(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    inside = asyncio.Event()

    async def stuck() -> None:
        async with store.write() as conn:
            await drive_rows.add_io(conn, drive.uuid, read=10)
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):  # not the busy timeout, not the pool timeout
        async with store.write() as conn:
            await drive_rows.add_io(conn, drive.uuid, read=1)
    assert await counters(store, drive.uuid) == (1, 1)


async def test_concurrent_increments_lose_nothing(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)

    async def count(n: int) -> None:
        async with store.write() as conn:
            await drive_rows.add_io(conn, drive.uuid, read=n)
            await asyncio.sleep(0)  # let the others queue up meanwhile

    await asyncio.gather(*(count(n) for n in range(1, 21)))
    assert await counters(store, drive.uuid) == (sum(range(1, 21)), 20)


async def test_locked_read_modify_write_loses_nothing(store: Store) -> None:
    """Reading a value and writing it back is safe once the row is locked."""
    ann = await add_user(store)
    drive = await add_drive(store, ann)

    async def bump() -> None:
        async with store.write() as conn:
            current = await drive_rows.get_drive(conn, drive.uuid, lock=True)
            assert current is not None
            await asyncio.sleep(0.001)
            await drive_rows.update_drive(conn, drive.uuid, read_bytes=current.read_bytes + 1)

    await asyncio.gather(*(bump() for _ in range(20)))
    assert await counters(store, drive.uuid) == (20, 0)


async def test_quota_checks_are_serialized_by_the_user_lock(store: Store) -> None:
    """Two creates that each fit the quota alone: the second sees the first."""
    ann = await add_user(store)
    async with store.write() as conn:
        await user_rows.set_quota(conn, ann.uuid, Quota(drive_bytes=3 << 20))
    checked = asyncio.Event()

    async def create(first: bool) -> None:
        if not first:
            await checked.wait()
        async with store.write() as conn:
            user = await user_rows.get_user(conn, ann.uuid, lock=True)
            assert user is not None
            used = await drive_rows.drive_bytes_used(conn, ann.uuid)
            user.quota.check("drive_bytes", used, 2 << 20)
            if first:
                checked.set()
                await asyncio.sleep(0.2)  # the other is waiting for the lock now
            await drive_rows.insert_drive(conn, Drive(str(_uuid.uuid4()), ann.uuid, "d", 2 << 20))

    results = await asyncio.gather(create(True), create(False), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], QuotaError)
    async with store.read() as conn:
        assert await drive_rows.drive_bytes_used(conn, ann.uuid) == 2 << 20


async def test_a_drive_claimed_twice_by_one_server_fails(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    server = await add_server(store, ann)
    claim = {"drive": drive.uuid, "server": server, "device": "ide:0:0", "exclusive": True}
    async with store.write() as conn:
        await conn.execute(claims.insert(), claim)
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await conn.execute(claims.insert(), {**claim, "device": "ide:0:1"})
    async with store.read() as conn:
        assert await drive_rows.claimed_by(conn, drive.uuid) == [f"{server}:ide:0:0"]


async def test_concurrent_claims_of_one_pair_one_wins(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    server = await add_server(store, ann)

    async def claim(device: str) -> None:
        async with store.write() as conn:
            await conn.execute(
                claims.insert(),
                {"drive": drive.uuid, "server": server, "device": device, "exclusive": True},
            )
            await asyncio.sleep(0.05)

    results = await asyncio.gather(claim("ide:0:0"), claim("ide:0:1"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["IntegrityError", "NoneType"]
    async with store.read() as conn:
        assert len(await drive_rows.claimed_by(conn, drive.uuid)) == 1


def test_concurrent_migrations_all_succeed(url: str) -> None:
    """Managers (or the CLI and the server) starting together."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(url)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from alembic_version")).scalar() == 1
            assert conn.execute(sa.text("select count(*) from users")).scalar() == 0
    finally:
        engine.dispose()


# -- two writers on one SQLite file ---------------------------------------------


async def read_modify_write(store: Store, uuid: str, times: int) -> None:
    """Unlocked read-then-write: only serial transactions keep every update."""
    for _ in range(times):
        async with store.write() as conn:
            drive = await drive_rows.get_drive(conn, uuid)
            assert drive is not None
            await asyncio.sleep(0.001)
            await drive_rows.update_drive(conn, uuid, read_bytes=drive.read_bytes + 1)


async def test_two_stores_on_one_sqlite_file_both_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    migrate(url)
    one, two = Store(url), Store(url)
    try:
        ann = await add_user(one)
        drive = await add_drive(two, ann)
        await asyncio.gather(*(read_modify_write(s, drive.uuid, 10) for s in (one, two, one, two)))
        # One store holds the write lock for a while; the other waits for it.
        async with one.write() as conn:
            await drive_rows.add_io(conn, drive.uuid, read=1)
            waiting = asyncio.create_task(read_modify_write(two, drive.uuid, 1))
            await asyncio.sleep(0.3)
            assert not waiting.done()
        await waiting
        assert await counters(one, drive.uuid) == (42, 1)
        assert await counters(two, drive.uuid) == (42, 1)
    finally:
        await one.close()
        await two.close()


_CHILD = """
import asyncio, sys
from overcast.store import Store
from overcast.store import drives

async def main(url, uuid, times):
    store = Store(url)
    try:
        print("ready", flush=True)
        for _ in range(times):
            async with store.write() as conn:
                d = await drives.get_drive(conn, uuid)
                await asyncio.sleep(0.001)
                await drives.update_drive(conn, uuid, read_bytes=d.read_bytes + 1)
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_another_process_writes_meanwhile(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    migrate(url)
    store = Store(url)
    try:
        drive = await add_drive(store, await add_user(store))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            textwrap.dedent(_CHILD),
            url,
            drive.uuid,
            "100",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
        await read_modify_write(store, drive.uuid, 100)
        _, err = await child.communicate()
        assert child.returncode == 0, err.decode()
        assert await counters(store, drive.uuid) == (200, 0)
    finally:
        await store.close()
