"""The store on both backends: migrations, schema, and every row function.

Each test runs on a fresh SQLite file and on a fresh PostgreSQL database;
round trips compare whole model objects, so a field the store drops or
mangles on one backend fails the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid as _uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError, IntegrityError

from overcast.model.drive import ClaimType, Drive, LibraryFormat, Media
from overcast.model.resource import Ip, Vlan
from overcast.model.server import Server, ServerStatus
from overcast.model.user import Quota, User
from overcast.store import Store, migrate
from overcast.store import drives as drive_rows
from overcast.store import resources as resource_rows
from overcast.store import servers as server_rows
from overcast.store import users as user_rows
from overcast.store.tables import claims, metadata

MIGRATIONS = Path(drive_rows.__file__).parent / "migrations"


def sync_engine(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    yield from sync_engine(url)


async def add_user(store: Store, name: str = "ann", *, admin: bool = False) -> User:
    async with store.write() as conn:
        return await user_rows.insert_user(conn, name, _uuid.uuid4().hex * 2, admin=admin)


def new_drive(user: str | None, name: str = "d", **values: Any) -> Drive:
    values.setdefault("size", 1 << 20)
    return Drive(uuid=str(_uuid.uuid4()), user=user, name=name, **values)


async def add_drive(store: Store, drive: Drive) -> Drive:
    async with store.write() as conn:
        await drive_rows.insert_drive(conn, drive)
    return drive


async def add_servers(store: Store, user: User, count: int) -> list[str]:
    """Servers for claims to name (a claim's server is a foreign key)."""
    config = {"name": "s", "cpu": "100", "mem": "64"}
    servers = [
        Server(str(_uuid.uuid4()), user.uuid, config, ServerStatus.ACTIVE, "local")
        for _ in range(count)
    ]
    async with store.write() as conn:
        for server in servers:
            await server_rows.insert_server(conn, server)
    return [server.uuid for server in servers]


async def fetch_drive(store: Store, uuid: str) -> Drive | None:
    async with store.read() as conn:
        return await drive_rows.get_drive(conn, uuid)


# -- migrations and schema ----------------------------------------------------


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_migrate_creates_the_schema_and_is_idempotent(url: str, engine: sa.Engine) -> None:
    migrate(url)
    migrate(url)
    with engine.connect() as conn:
        versions = conn.execute(sa.text("select version_num from alembic_version")).all()
        tables = set(sa.inspect(conn).get_table_names())
    assert versions == [(head_revision(),)]
    assert head_revision() is not None
    assert tables == {*metadata.tables, "alembic_version"}


def schema_differences(engine: sa.Engine, target: sa.MetaData) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, target))


def test_migration_matches_tables(url: str, engine: sa.Engine) -> None:
    migrate(url)
    assert schema_differences(engine, metadata) == []


def test_schema_comparison_sees_a_difference(url: str, engine: sa.Engine) -> None:
    """The comparison above can fail: a changed copy of the tables differs."""
    migrate(url)
    changed = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["drives"].append_column(sa.Column("extra", sa.Integer))
    changed.tables["users"].c.quota_mem.type = sa.Integer()
    diffs = schema_differences(engine, changed)
    assert [d[0] for d in diffs if isinstance(d, tuple)] == ["add_column"]
    assert any(isinstance(d, list) and d[0][0] == "modify_type" for d in diffs), diffs


def reflected(engine: sa.Engine) -> dict[str, Any]:
    """Everything about each table that reflection reports, names included."""
    inspector = sa.inspect(engine)
    found: dict[str, Any] = {}
    for table in sorted(metadata.tables):
        found[table] = {
            "columns": [
                (c["name"], repr(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table),
            "fks": sorted(inspector.get_foreign_keys(table), key=lambda fk: str(fk["name"])),
            "indexes": sorted(inspector.get_indexes(table), key=lambda ix: str(ix["name"])),
            "unique": sorted(
                inspector.get_unique_constraints(table), key=lambda uq: str(uq["name"])
            ),
        }
    return found


def test_migration_builds_what_create_all_builds(new_url: Callable[[], str]) -> None:
    """Constraint and index names too, which compare_metadata does not check."""
    migrated, created = new_url(), new_url()
    migrate(migrated)
    for a in sync_engine(migrated):
        for b in sync_engine(created):
            metadata.create_all(b)
            assert reflected(a) == reflected(b)


# -- transactions ---------------------------------------------------------------


async def test_read_is_read_only(store: Store) -> None:
    user = await add_user(store)
    with pytest.raises(DBAPIError):
        async with store.read() as conn:
            await user_rows.set_quota(conn, user.uuid, Quota(servers=1))
    async with store.read() as conn:
        assert (await user_rows.get_user(conn, user.uuid)) == user


async def test_read_is_one_snapshot(store: Store) -> None:
    user = await add_user(store)
    async with store.read() as conn:
        assert (await user_rows.get_user(conn, user.uuid)) == user
        async with store.write() as w:
            await user_rows.set_quota(w, user.uuid, Quota(servers=3))
        assert (await user_rows.get_user(conn, user.uuid)) == user
    async with store.read() as conn:
        changed = await user_rows.get_user(conn, user.uuid)
    assert changed is not None and changed.quota == Quota(servers=3)


async def test_nested_write_is_refused(store: Store) -> None:
    # Without the guard this waits for itself forever on SQLite.
    with pytest.raises(RuntimeError, match="inside write"):
        async with asyncio.timeout(5), store.write(), store.write():
            pass
    await add_user(store)  # the store still writes


async def test_a_task_started_inside_a_write_may_write(store: Store) -> None:
    """It is not a nested write: it waits for (SQLite) or runs beside the first."""
    async with store.write() as conn:
        later = asyncio.create_task(add_user(store, "later"))
        first = await user_rows.insert_user(conn, "first", "a" * 64, admin=False)
    second = await later
    async with store.read() as conn:
        assert await user_rows.list_users(conn) in ([first, second], [second, first])


# -- users --------------------------------------------------------------------


async def test_users_round_trip(store: Store) -> None:
    ann = await add_user(store, "ann")
    root = await add_user(store, "Ünïcode root", admin=True)
    big = Quota(drive_bytes=64 << 40, servers=1 << 40, cpu=1 << 40, mem=1 << 40)
    async with store.write() as conn:
        await user_rows.set_quota(conn, ann.uuid, big)
        await user_rows.set_user_key(conn, root.uuid, "f" * 64)
    async with store.read() as conn:
        assert await user_rows.get_user(conn, ann.uuid) == dataclasses.replace(ann, quota=big)
        assert await user_rows.get_user(conn, str(_uuid.uuid4())) is None
        assert await user_rows.user_by_digest(conn, "f" * 64) == root
        assert await user_rows.list_users(conn) == [dataclasses.replace(ann, quota=big), root]
        assert await user_rows.count_users(conn) == 2
        assert await user_rows.count_users(conn, admin=True) == 1
        assert await user_rows.count_users(conn, admin=False) == 1
    async with store.write() as conn:
        await user_rows.set_quota(conn, ann.uuid, Quota())
        await user_rows.delete_user(conn, root.uuid)
    async with store.read() as conn:
        assert await user_rows.list_users(conn) == [ann]
        assert await user_rows.user_by_digest(conn, "f" * 64) is None


async def test_two_users_cannot_share_a_key_digest(store: Store) -> None:
    async with store.write() as conn:
        await user_rows.insert_user(conn, "a", "d" * 64, admin=False)
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await user_rows.insert_user(conn, "b", "d" * 64, admin=False)


async def test_a_user_with_objects_cannot_be_deleted(store: Store) -> None:
    ann = await add_user(store)
    await add_drive(store, new_drive(ann.uuid))
    async with store.write() as conn:
        await resource_rows.add_pool(conn, "10.1.0.0/24", None, None)
        await resource_rows.insert_ip(conn, "10.1.0.5", "10.1.0.0/24", ann.uuid, "ip")
        await resource_rows.insert_vlan(conn, str(_uuid.uuid4()), ann.uuid, "v")
    async with store.read() as conn:
        assert await user_rows.owned_kinds(conn, ann.uuid) == ["drives", "ips", "vlans"]
    # The foreign keys hold even if the service forgot to look (SQLite too).
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await user_rows.delete_user(conn, ann.uuid)


# -- drives -------------------------------------------------------------------


async def test_drives_round_trip(store: Store) -> None:
    ann = await add_user(store)
    reader = str(_uuid.uuid4())
    drive = await add_drive(
        store,
        new_drive(
            ann.uuid,
            "système",
            size=64 << 40,
            claim_type=ClaimType.SHARED,
            readers=(reader, "ffffffff-ffff-ffff-ffff-ffffffffffff"),
            tags=("web", "db"),
            meta={"user:zeta": "1", "user:alpha": "café ☁ x=y"},
        ),
    )
    library = await add_drive(
        store,
        new_drive(
            None,
            "debian",
            claim_type=ClaimType.SHARED,
            media=Media.CDROM,
            format=LibraryFormat.GZIP,
            rawsize=3 << 30,
        ),
    )
    assert await fetch_drive(store, drive.uuid) == drive
    assert await fetch_drive(store, library.uuid) == library
    assert await fetch_drive(store, str(_uuid.uuid4())) is None
    stored = await fetch_drive(store, drive.uuid)
    assert stored is not None and list(stored.meta) == ["user:zeta", "user:alpha"]
    async with store.read() as conn:
        assert await drive_rows.list_drives(conn, ann.uuid) == [drive]
        assert await drive_rows.list_drives(conn, None) == [library]
        assert await drive_rows.drive_bytes_used(conn, ann.uuid) == 64 << 40
        assert await drive_rows.drive_bytes_used(conn, str(_uuid.uuid4())) == 0


async def test_drive_updates(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, new_drive(ann.uuid, tags=("a",), meta={"user:a": "1"}))
    changes: dict[str, Any] = {
        "name": "renamed",
        "size": 2 << 20,
        "claim_type": ClaimType.SHARED,
        "readers": (str(_uuid.uuid4()),),
        "tags": (),
        "meta": {"user:a": "2", "user:b": ""},
    }
    async with store.write() as conn:
        await drive_rows.update_drive(conn, drive.uuid, **changes)
    assert await fetch_drive(store, drive.uuid) == dataclasses.replace(drive, **changes)


async def test_drives_list_in_creation_order(store: Store) -> None:
    ann, bob = await add_user(store, "ann"), await add_user(store, "bob")
    mine = [await add_drive(store, new_drive(ann.uuid, name)) for name in "zyxwv"]
    await add_drive(store, new_drive(bob.uuid))
    async with store.write() as conn:  # several in one transaction, too
        more = [new_drive(ann.uuid, name) for name in "cba"]
        for drive in more:
            await drive_rows.insert_drive(conn, drive)
    async with store.read() as conn:
        assert await drive_rows.list_drives(conn, ann.uuid) == mine + more
        assert [u.name for u in await user_rows.list_users(conn)] == ["ann", "bob"]


async def test_imaging_state_and_pending_images(store: Store) -> None:
    ann = await add_user(store)
    source, first, second = [await add_drive(store, new_drive(ann.uuid)) for _ in range(3)]
    async with store.write() as conn:
        await drive_rows.set_imaging(conn, second.uuid, "queued", source=source.uuid)
        await drive_rows.set_imaging(conn, first.uuid, "queued", source=source.uuid, gunzip=True)
    async with store.read() as conn:
        assert await drive_rows.pending_images(conn) == [
            (first.uuid, source.uuid, True),
            (second.uuid, source.uuid, False),
        ]
    async with store.write() as conn:
        await drive_rows.set_imaging(conn, first.uuid, "42%")
        await drive_rows.set_imaging(conn, second.uuid, None)
    assert await fetch_drive(store, first.uuid) == dataclasses.replace(first, imaging="42%")
    assert await fetch_drive(store, second.uuid) == second
    async with store.read() as conn:
        assert await drive_rows.pending_images(conn) == [(first.uuid, source.uuid, True)]


async def test_add_io_counts_requests_and_bytes(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, new_drive(ann.uuid))
    async with store.write() as conn:
        await drive_rows.add_io(conn, drive.uuid, read=100)
        await drive_rows.add_io(conn, drive.uuid, read=5 << 40)
        await drive_rows.add_io(conn, drive.uuid, written=7)
        await drive_rows.add_io(conn, drive.uuid)
    assert await fetch_drive(store, drive.uuid) == dataclasses.replace(
        drive, read_bytes=100 + (5 << 40), read_requests=2, write_bytes=7, write_requests=1
    )


async def test_claims_show_as_claimed(store: Store) -> None:
    ann = await add_user(store)
    shared = await add_drive(store, new_drive(ann.uuid, claim_type=ClaimType.SHARED))
    idle = await add_drive(store, new_drive(ann.uuid))
    library = await add_drive(store, new_drive(None, claim_type=ClaimType.SHARED))
    servers = sorted(await add_servers(store, ann, 2))
    async with store.write() as conn:
        await conn.execute(
            claims.insert(),
            [
                {
                    "drive": shared.uuid,
                    "server": servers[1],
                    "device": "ide:0:1",
                    "exclusive": False,
                },
                {
                    "drive": shared.uuid,
                    "server": servers[0],
                    "device": "block:0",
                    "exclusive": False,
                },
                {
                    "drive": library.uuid,
                    "server": servers[0],
                    "device": "ide:1:0",
                    "exclusive": False,
                },
            ],
        )
    tokens = (f"{servers[0]}:block:0", f"{servers[1]}:ide:0:1")
    claimed = dataclasses.replace(shared, claimed=tokens)
    assert await fetch_drive(store, shared.uuid) == claimed
    async with store.read() as conn:
        assert await drive_rows.list_drives(conn, ann.uuid) == [claimed, idle]
        assert await drive_rows.list_drives(conn, None) == [
            dataclasses.replace(library, claimed=(f"{servers[0]}:ide:1:0",))
        ]
        assert await drive_rows.claimed_by(conn, shared.uuid) == list(tokens)
        assert await drive_rows.claimed_by(conn, idle.uuid) == []
    # A claimed drive's row cannot go while the claim stays.
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await drive_rows.delete_drive(conn, shared.uuid)


async def test_drive_delete(store: Store) -> None:
    ann = await add_user(store)
    gone, kept = (
        await add_drive(store, new_drive(ann.uuid)),
        await add_drive(store, new_drive(ann.uuid)),
    )
    async with store.write() as conn:
        await drive_rows.delete_drive(conn, gone.uuid)
    assert await fetch_drive(store, gone.uuid) is None
    async with store.read() as conn:
        assert await drive_rows.list_drives(conn, ann.uuid) == [kept]


# -- IPs and VLANs ------------------------------------------------------------


async def test_pools_and_ips_round_trip(store: Store) -> None:
    ann, bob = await add_user(store, "ann"), await add_user(store, "bob")
    async with store.write() as conn:
        await resource_rows.add_pool(conn, "192.0.2.0/26", "192.0.2.1", "192.0.2.2")
        await resource_rows.add_pool(conn, "2001:db8::/64", None, None)
        await resource_rows.insert_ip(conn, "192.0.2.9", "192.0.2.0/26", ann.uuid, "web")
        await resource_rows.insert_ip(conn, "2001:db8::9", "2001:db8::/64", ann.uuid, "six")
        await resource_rows.insert_ip(conn, "192.0.2.5", "192.0.2.0/26", bob.uuid, "bob's")
    web = Ip("192.0.2.9", ann.uuid, "web", "255.255.255.192", "192.0.2.1", "192.0.2.2")
    six = Ip("2001:db8::9", ann.uuid, "six", "ffff:ffff:ffff:ffff::", None, None)
    async with store.read() as conn:
        pools = await resource_rows.list_pools(conn)
        assert [(p.cidr, p.gateway, p.nameserver) for p in pools] == [
            ("192.0.2.0/26", "192.0.2.1", "192.0.2.2"),
            ("2001:db8::/64", None, None),
        ]
        assert await resource_rows.get_ip(conn, "192.0.2.9") == web
        assert await resource_rows.get_ip(conn, "192.0.2.10") is None
        assert await resource_rows.list_ips(conn, ann.uuid) == [web, six]
        assert await resource_rows.allocated_in(conn, "192.0.2.0/26") == {
            "192.0.2.9",
            "192.0.2.5",
        }
    async with store.write() as conn:
        await resource_rows.update_ip(
            conn, web.address, name="www", tags=("a", "b"), meta={"user:k": "v ☁"}
        )
        await resource_rows.delete_ip(conn, six.address)
    async with store.read() as conn:
        assert await resource_rows.list_ips(conn, ann.uuid) == [
            dataclasses.replace(web, name="www", tags=("a", "b"), meta={"user:k": "v ☁"})
        ]
    # An address belongs to one user, whatever the pool.
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await resource_rows.insert_ip(conn, "192.0.2.9", "192.0.2.0/26", bob.uuid, "again")


async def test_an_ip_needs_a_pool(store: Store) -> None:
    ann = await add_user(store)
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await resource_rows.insert_ip(conn, "198.51.100.1", "198.51.100.0/24", ann.uuid, "x")


async def test_vlans_round_trip(store: Store) -> None:
    ann, bob = await add_user(store, "ann"), await add_user(store, "bob")
    ids = [str(_uuid.uuid4()) for _ in range(3)]
    async with store.write() as conn:
        await resource_rows.insert_vlan(conn, ids[0], ann.uuid, "zeta")
        await resource_rows.insert_vlan(conn, ids[1], bob.uuid, "bob")
    async with store.write() as conn:
        await resource_rows.insert_vlan(conn, ids[2], ann.uuid, "alpha")
    zeta, alpha = Vlan(ids[0], ann.uuid, "zeta"), Vlan(ids[2], ann.uuid, "alpha")
    async with store.read() as conn:
        assert await resource_rows.get_vlan(conn, ids[0]) == zeta
        assert await resource_rows.get_vlan(conn, str(_uuid.uuid4())) is None
        assert await resource_rows.list_vlans(conn, ann.uuid) == [zeta, alpha]
    async with store.write() as conn:
        await resource_rows.update_vlan(conn, ids[2], tags=("t",), meta={"user:x": "y"})
        await resource_rows.delete_vlan(conn, ids[0])
    async with store.read() as conn:
        assert await resource_rows.list_vlans(conn, ann.uuid) == [
            dataclasses.replace(alpha, tags=("t",), meta={"user:x": "y"})
        ]
        assert await resource_rows.list_vlans(conn, bob.uuid) == [Vlan(ids[1], bob.uuid, "bob")]
