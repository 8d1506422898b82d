"""Server rows, NICs and claims in the store, on SQLite and PostgreSQL.

What the create path of DESIGN.md leans on: round trips of whole records,
the constraints that refuse a second MAC on a network, a second user of an
address or of a VNC port, a claim without a server; deleting a server
releasing its claims and NICs in the same statement; the quota and
capacity sums; and, under contention, "lock the drive, read its claims,
claim it if free" leaving exactly one exclusive claim.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import IntegrityError

from overcast.model.drive import ClaimType, Drive
from overcast.model.errors import BusyError
from overcast.model.server import (
    Nic,
    NicModel,
    Server,
    ServerStatus,
    new_mac,
    parse_server_spec,
    server_info,
)
from overcast.model.user import Quota, User
from overcast.store import Store, migrate
from overcast.store import drives as drive_rows
from overcast.store import resources as resource_rows
from overcast.store import servers as server_rows
from overcast.store import users as user_rows
from overcast.store.servers import Claim, DriveClaim
from overcast.store.tables import claims, nics
from pg import fresh_database

MIGRATIONS = Path(server_rows.__file__).parent / "migrations"
POOL = "192.0.2.0/24"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    e = sa.create_engine(url)
    try:
        yield e
    finally:
        e.dispose()


def new_id() -> str:
    return str(_uuid.uuid4())


async def add_user(store: Store, name: str = "ann") -> User:
    async with store.write() as tx:
        return await user_rows.insert_user(tx, name, _uuid.uuid4().hex * 2, admin=False)


async def add_drive(store: Store, user: User, claim_type: ClaimType = ClaimType.EXCLUSIVE) -> Drive:
    drive = Drive(uuid=new_id(), user=user.uuid, name="d", size=1 << 20, claim_type=claim_type)
    async with store.write() as tx:
        await drive_rows.insert_drive(tx, drive)
    return drive


async def add_vlan(store: Store, user: User) -> str:
    vlan = new_id()
    async with store.write() as tx:
        await resource_rows.insert_vlan(tx, vlan, user.uuid, "v")
    return vlan


def make_server(
    user: User,
    config: Mapping[str, str] | None = None,
    *,
    ips: Mapping[int, str] | None = None,
    status: ServerStatus = ServerStatus.ACTIVE,
    host: str = "local",
    **fields: Any,
) -> Server:
    """A server as the create path would write it: NICs realised from the
    configuration, a MAC generated where none was given."""
    config = dict(config or {"name": "web", "cpu": "2000", "mem": "256"})
    spec = parse_server_spec(config)
    realised = tuple(
        Nic(n.index, n.model, n.mac or new_mac(), n.vlan, (ips or {}).get(n.index))
        for n in spec.nics
    )
    return Server(
        uuid=new_id(),
        user=user.uuid,
        config=config,
        status=status,
        host=host,
        nics=realised,
        **fields,
    )


async def insert(store: Store, server: Server, claimed: list[Claim] | None = None) -> Server:
    async with store.write() as tx:
        await server_rows.insert_server(tx, server, claimed or [])
    return server


async def fetch(store: Store, uuid: str) -> Server | None:
    async with store.read() as tx:
        return await server_rows.get_server(tx, uuid)


def rich_config(boot: str, data: str, vlan: str, ip: str) -> dict[str, str]:
    return {
        "name": "système ☁",
        "cpu": "5000",
        "mem": "1024",
        "persistent": "true",
        "ide:0:0": boot,
        "block:1": data,
        "block:1:media": "cdrom",
        "boot": "ide:0:0",
        "nic:0:model": "virtio",
        "nic:0:dhcp": ip,
        "nic:1:model": "e1000",
        "nic:1:vlan": vlan,
        "nic:1:mac": "02:00:00:00:00:01",
        "vnc": "auto",
        "vnc:password": "secret",
        "tags": "web prod",
        "user:zeta": "1",
        "user:alpha": "café x=y",
    }


# -- round trips ------------------------------------------------------------------


async def test_servers_round_trip(store: Store) -> None:
    ann = await add_user(store)
    boot, data = await add_drive(store, ann), await add_drive(store, ann, ClaimType.SHARED)
    vlan = await add_vlan(store, ann)
    server = make_server(
        ann,
        rich_config(boot.uuid, data.uuid, vlan, "192.0.2.7"),
        ips={0: "192.0.2.7"},
        started=1_700_000_000.25,
        vnc_ip="127.0.0.1",
        vnc_port=5901,
    )
    await insert(
        store,
        server,
        [Claim(boot.uuid, "ide:0:0", True), Claim(data.uuid, "block:1", False)],
    )
    stored = await fetch(store, server.uuid)
    assert stored == server
    assert stored is not None and list(stored.config) == list(server.config)  # order kept
    assert stored.spec == server.spec and stored.spec.smp == 3
    assert await fetch(store, new_id()) is None
    async with store.read() as tx:
        assert await server_rows.list_servers(tx, ann.uuid) == [server]
        assert await server_rows.servers_on_host(tx, "local") == [server]
        assert await server_rows.servers_on_host(tx, "elsewhere") == []
        assert await server_rows.drive_claims(tx, boot.uuid) == [
            DriveClaim(server.uuid, "ide:0:0", True)
        ]
        assert await server_rows.drive_claims(tx, data.uuid) == [(server.uuid, "block:1", False)]
        # The drive records see the claims too.
        assert await drive_rows.claimed_by(tx, boot.uuid) == [f"{server.uuid}:ide:0:0"]
        assert await server_rows.ip_in_use(tx, "192.0.2.7") == server.uuid
        assert await server_rows.ip_in_use(tx, "192.0.2.8") is None
        assert await server_rows.vlan_in_use(tx, vlan) == server.uuid
        assert await server_rows.vlan_in_use(tx, new_id()) is None
        assert await server_rows.mac_in_use(tx, vlan, "02:00:00:00:00:01") == server.uuid
        assert await server_rows.mac_in_use(tx, None, "02:00:00:00:00:01") is None
        assert await server_rows.mac_in_use(tx, None, server.nics[0].mac) == server.uuid
        assert await server_rows.vnc_ports(tx, "local") == {5901}
        assert await server_rows.vnc_ports(tx, "elsewhere") == set()


async def test_servers_list_in_creation_order(store: Store) -> None:
    ann, bob = await add_user(store, "ann"), await add_user(store, "bob")
    mine = [await insert(store, make_server(ann, host=f"h{i % 2}")) for i in range(4)]
    await insert(store, make_server(bob, host="h0"))
    async with store.write() as tx:  # several in one transaction, too
        more = [make_server(ann, host="h1") for _ in range(3)]
        for server in more:
            await server_rows.insert_server(tx, server)
    async with store.read() as tx:
        assert await server_rows.list_servers(tx, ann.uuid) == mine + more
        on_h1 = await server_rows.servers_on_host(tx, "h1")
        assert on_h1 == [mine[1], mine[3], *more]
        assert len(await server_rows.servers_on_host(tx, "h0")) == 3


async def test_status_vnc_and_config_changes(store: Store) -> None:
    ann = await add_user(store)
    server = await insert(store, make_server(ann, status=ServerStatus.STARTING))
    async with store.write() as tx:
        await server_rows.set_status(tx, server.uuid, ServerStatus.ACTIVE, 1234.5)
        await server_rows.set_vnc(tx, server.uuid, "192.0.2.1", 5905)
    assert await fetch(store, server.uuid) == dataclasses.replace(
        server, status=ServerStatus.ACTIVE, started=1234.5, vnc_ip="192.0.2.1", vnc_port=5905
    )
    config = {**server.config, "name": "renamed", "cpu": "4000", "mem": "512", "tags": "t"}
    async with store.write() as tx:
        await server_rows.update_config(tx, server.uuid, config)
        await server_rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
        await server_rows.set_vnc(tx, server.uuid, None, None)
        # The columns that repeat the configuration follow it.
        await server_rows.set_status(tx, server.uuid, ServerStatus.ACTIVE, 99.0)
        assert await server_rows.usage(tx, ann.uuid) == (1, 4000, 512)
        await server_rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
    stored = await fetch(store, server.uuid)
    assert stored == dataclasses.replace(server, config=config, status=ServerStatus.STOPPED)
    assert stored is not None and (stored.spec.name, stored.spec.smp) == ("renamed", 2)


async def test_insert_refuses_nics_that_are_not_the_configured_ones(store: Store) -> None:
    ann = await add_user(store)
    config = {"name": "n", "cpu": "100", "mem": "64", "nic:0:model": "e1000"}
    server = make_server(ann, config)
    wrong_model = dataclasses.replace(
        server, nics=(dataclasses.replace(server.nics[0], model=NicModel.VIRTIO),)
    )
    with_mac = make_server(ann, {**config, "nic:0:mac": "02:00:00:00:00:09"})
    wrong_mac = dataclasses.replace(
        with_mac, nics=(dataclasses.replace(with_mac.nics[0], mac="02:00:00:00:00:0a"),)
    )
    for bad in (dataclasses.replace(server, nics=()), wrong_model, wrong_mac):
        with pytest.raises(ValueError, match=r"(?i)nic"):
            await insert(store, bad)
    async with store.read() as tx:
        assert await server_rows.list_servers(tx, ann.uuid) == []


# -- what the constraints guarantee ---------------------------------------------------


async def test_a_mac_once_per_network(store: Store) -> None:
    ann = await add_user(store)
    red, blue = await add_vlan(store, ann), await add_vlan(store, ann)
    mac = "02:aa:00:00:00:01"

    def on(vlan: str | None) -> Server:
        config = {"name": "n", "cpu": "100", "mem": "64", "nic:0:model": "e1000"}
        config["nic:0:mac"] = mac
        if vlan:
            config["nic:0:vlan"] = vlan
        return make_server(ann, config)

    public, first_red = await insert(store, on(None)), await insert(store, on(red))
    await insert(store, on(blue))  # another network: fine
    for clash in (on(None), on(red)):
        with pytest.raises(IntegrityError):
            await insert(store, clash)
    async with store.read() as tx:
        assert await server_rows.mac_in_use(tx, None, mac) == public.uuid
        assert await server_rows.mac_in_use(tx, red, mac) == first_red.uuid
        assert len(await server_rows.list_servers(tx, ann.uuid)) == 3
    # Once the server is gone, its MAC is free on its network again.
    async with store.write() as tx:
        await server_rows.delete_server(tx, public.uuid)
    await insert(store, on(None))


async def test_a_nics_network_key_is_its_vlan(store: Store) -> None:
    """The migration's CHECK (which schema comparison does not see) holds."""
    ann = await add_user(store)
    vlan = await add_vlan(store, ann)
    server = await insert(store, make_server(ann))
    row = {"server": server.uuid, "slot": 0, "model": "e1000", "mac": "02:00:00:00:00:01"}
    for vlan_value, network in ((None, vlan), (vlan, ""), (vlan, new_id())):
        with pytest.raises(IntegrityError):
            async with store.write() as tx:
                await tx.execute(nics.insert().values(**row, vlan=vlan_value, network=network))
    async with store.write() as tx:
        await tx.execute(nics.insert().values(**row, vlan=vlan, network=vlan))
    stored = await fetch(store, server.uuid)
    assert stored is not None and stored.nics == (Nic(0, NicModel.E1000, row["mac"], vlan),)


async def test_an_address_in_use_by_one_nic_only(store: Store) -> None:
    ann = await add_user(store)
    config = {"name": "n", "cpu": "100", "mem": "64", "nic:0:model": "e1000"}
    first = await insert(store, make_server(ann, config, ips={0: "192.0.2.9"}))
    await insert(store, make_server(ann, config))  # no address: NULLs never clash
    await insert(store, make_server(ann, config))
    with pytest.raises(IntegrityError):
        await insert(store, make_server(ann, config, ips={0: "192.0.2.9"}))
    async with store.read() as tx:
        assert await server_rows.ip_in_use(tx, "192.0.2.9") == first.uuid
        assert len(await server_rows.list_servers(tx, ann.uuid)) == 3


async def test_a_vnc_port_once_per_host(store: Store) -> None:
    ann = await add_user(store)
    await insert(store, make_server(ann, host="a", vnc_ip="127.0.0.1", vnc_port=5900))
    await insert(store, make_server(ann, host="b", vnc_ip="127.0.0.1", vnc_port=5900))
    await insert(store, make_server(ann, host="a"))  # no VNC: no port
    await insert(store, make_server(ann, host="a"))
    with pytest.raises(IntegrityError):
        await insert(store, make_server(ann, host="a", vnc_ip="127.0.0.1", vnc_port=5900))
    async with store.read() as tx:
        assert await server_rows.vnc_ports(tx, "a") == {5900}


async def test_a_claim_needs_its_server(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    with pytest.raises(IntegrityError):
        async with store.write() as tx:
            await server_rows.take_claims(tx, new_id(), [Claim(drive.uuid, "ide:0:0", True)])
    async with store.read() as tx:
        assert await server_rows.drive_claims(tx, drive.uuid) == []


async def test_a_vlan_with_a_nic_on_it_cannot_be_deleted(store: Store) -> None:
    ann = await add_user(store)
    vlan = await add_vlan(store, ann)
    config = {"name": "n", "cpu": "100", "mem": "64", "nic:0:model": "e1000", "nic:0:vlan": vlan}
    server = await insert(store, make_server(ann, config))
    with pytest.raises(IntegrityError):
        async with store.write() as tx:
            await resource_rows.delete_vlan(tx, vlan)
    # Nor can a NIC name a VLAN that does not exist.
    with pytest.raises(IntegrityError):
        await insert(store, make_server(ann, {**config, "nic:0:vlan": new_id()}))
    async with store.write() as tx:
        await server_rows.delete_server(tx, server.uuid)
        await resource_rows.delete_vlan(tx, vlan)
        assert await resource_rows.get_vlan(tx, vlan) is None


async def test_deleting_a_server_releases_its_claims_and_nics(
    store: Store, engine: sa.Engine
) -> None:
    ann = await add_user(store)
    drive, other = await add_drive(store, ann), await add_drive(store, ann, ClaimType.SHARED)
    vlan = await add_vlan(store, ann)
    config = rich_config(drive.uuid, other.uuid, vlan, "192.0.2.7")
    gone = await insert(
        store,
        make_server(ann, config, ips={0: "192.0.2.7"}),
        [Claim(drive.uuid, "ide:0:0", True), Claim(other.uuid, "block:1", False)],
    )
    kept = await insert(store, make_server(ann), [Claim(other.uuid, "ide:0:0", False)])

    def rows() -> tuple[int, int]:
        with engine.connect() as conn:
            count = sa.select(sa.func.count())
            return (
                conn.execute(count.select_from(claims)).scalar_one(),
                conn.execute(count.select_from(nics)).scalar_one(),
            )

    assert rows() == (3, 2)
    async with store.write() as tx:
        await server_rows.delete_server(tx, gone.uuid)
    assert rows() == (1, 0)
    async with store.read() as tx:
        assert await server_rows.get_server(tx, gone.uuid) is None
        assert await server_rows.drive_claims(tx, drive.uuid) == []
        assert await server_rows.drive_claims(tx, other.uuid) == [(kept.uuid, "ide:0:0", False)]
        assert await server_rows.ip_in_use(tx, "192.0.2.7") is None
        assert await server_rows.vlan_in_use(tx, vlan) is None
        assert await server_rows.list_servers(tx, ann.uuid) == [kept]
    # Released for real: the drive and the VLAN can go now.
    async with store.write() as tx:
        await drive_rows.delete_drive(tx, drive.uuid)
        await resource_rows.delete_vlan(tx, vlan)


async def test_a_failed_create_leaves_nothing(store: Store) -> None:
    """A conflict late in the create transaction undoes the server's row too."""
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    config = {"name": "n", "cpu": "100", "mem": "64", "nic:0:model": "e1000"}
    await insert(store, make_server(ann, config, ips={0: "192.0.2.9"}))
    clash = make_server(ann, {**config, "ide:0:0": drive.uuid}, ips={0: "192.0.2.9"})
    with pytest.raises(IntegrityError):
        await insert(store, clash, [Claim(drive.uuid, "ide:0:0", True)])
    assert await fetch(store, clash.uuid) is None
    async with store.read() as tx:
        assert await server_rows.drive_claims(tx, drive.uuid) == []


async def test_release_and_take_claims_again(store: Store) -> None:
    """A persistent server stops (its drives are free) and starts again."""
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    server = await insert(store, make_server(ann), [Claim(drive.uuid, "ide:0:0", True)])
    async with store.write() as tx:
        await server_rows.release_claims(tx, server.uuid)
        await server_rows.set_status(tx, server.uuid, ServerStatus.STOPPED)
    async with store.read() as tx:
        assert await server_rows.drive_claims(tx, drive.uuid) == []
    async with store.write() as tx:
        await server_rows.take_claims(tx, server.uuid, [Claim(drive.uuid, "block:0", True)])
    async with store.read() as tx:
        assert await server_rows.drive_claims(tx, drive.uuid) == [(server.uuid, "block:0", True)]
    # One server cannot claim one drive twice.
    with pytest.raises(IntegrityError):
        async with store.write() as tx:
            await server_rows.take_claims(tx, server.uuid, [Claim(drive.uuid, "ide:0:1", True)])


# -- sums ----------------------------------------------------------------------


async def test_usage_and_host_usage_count_what_is_not_stopped(store: Store) -> None:
    ann, bob = await add_user(store, "ann"), await add_user(store, "bob")
    async with store.read() as tx:
        assert await server_rows.usage(tx, ann.uuid) == (0, 0, 0)
        assert await server_rows.host_usage(tx, "a") == (0, 0, 0)

    def sized(user: User, cpu: int, mem: int, host: str, status: ServerStatus) -> Server:
        config = {"name": "s", "cpu": str(cpu), "mem": str(mem)}
        return make_server(user, config, host=host, status=status)

    for server in (
        sized(ann, 1000, 256, "a", ServerStatus.ACTIVE),
        sized(ann, 2000, 512, "b", ServerStatus.STARTING),
        sized(ann, 4000, 1024, "a", ServerStatus.PAUSED),
        sized(ann, 8000, 2048, "a", ServerStatus.STOPPED),
        sized(bob, 16000, 4096, "a", ServerStatus.ACTIVE),
    ):
        await insert(store, server)
    async with store.read() as tx:
        assert await server_rows.usage(tx, ann.uuid) == (3, 7000, 1792)
        assert await server_rows.usage(tx, bob.uuid) == (1, 16000, 4096)
        assert await server_rows.host_usage(tx, "a") == (21000, 5376, 3)
        assert await server_rows.host_usage(tx, "b") == (2000, 512, 1)


async def test_a_user_with_servers_cannot_be_deleted(store: Store) -> None:
    ann = await add_user(store)
    await insert(store, make_server(ann))
    async with store.read() as tx:
        assert await user_rows.owned_kinds(tx, ann.uuid) == ["servers"]
    with pytest.raises(IntegrityError):
        async with store.write() as tx:
            await user_rows.delete_user(tx, ann.uuid)


# -- concurrency -----------------------------------------------------------------


async def claim_if_free(
    store: Store,
    user: User,
    drive: str,
    *,
    lock: bool,
    checked: Callable[[], Awaitable[object]] | None = None,
) -> Server:
    """The create path's check-and-claim, reduced to one exclusive drive.

    ``checked`` runs between the check and the claim; by default a short
    sleep, long enough for the others to see the drive unclaimed, unless
    the drive's row lock keeps them out.
    """
    server = make_server(user, {"name": "n", "cpu": "100", "mem": "64", "ide:0:0": drive})
    async with store.write() as tx:
        assert await drive_rows.get_drive(tx, drive, lock=lock) is not None
        if await server_rows.drive_claims(tx, drive):
            raise BusyError(f"drive {drive} is claimed")
        await (checked() if checked else asyncio.sleep(0.01))
        await server_rows.insert_server(tx, server, [Claim(drive, "ide:0:0", True)])
    return server


async def test_twenty_creates_for_one_exclusive_drive_one_wins(store: Store) -> None:
    ann = await add_user(store)
    drive = await add_drive(store, ann)
    results = await asyncio.gather(
        *(claim_if_free(store, ann, drive.uuid, lock=True) for _ in range(20)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Server)]
    assert len(won) == 1
    assert all(isinstance(r, BusyError) for r in results if r not in won), results
    async with store.read() as tx:
        assert await server_rows.drive_claims(tx, drive.uuid) == [(won[0].uuid, "ide:0:0", True)]
        assert await server_rows.list_servers(tx, ann.uuid) == won


@pytest.mark.postgres
async def test_without_the_drive_lock_postgresql_lets_two_win(pg_url: str) -> None:
    """The control for the test above: on PostgreSQL it is the row lock, not
    luck, that leaves one claim. (SQLite's writes are serial anyway: there
    the barrier would wait forever.)"""
    url = fresh_database(pg_url)
    migrate(url)
    store = Store(url)
    try:
        ann = await add_user(store)
        drive = await add_drive(store, ann)
        # Every one of them has checked before any claims.
        barrier = asyncio.Barrier(5)
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(
                    claim_if_free(store, ann, drive.uuid, lock=False, checked=barrier.wait)
                    for _ in range(5)
                ),
                return_exceptions=True,
            )
        assert all(isinstance(r, Server) for r in results), results
        async with store.read() as tx:
            assert len(await server_rows.drive_claims(tx, drive.uuid)) == 5
    finally:
        await store.close()


# -- migration ---------------------------------------------------------------------


def alembic(conn: sa.Connection, verb: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    getattr(command, verb)(cfg, revision)


async def test_upgrade_from_0001_keeps_data_and_downgrades(url: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        alembic(conn, "upgrade", "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into users (uuid, name, key_digest, admin, created)"
                " values ('u', 'ann', 'k', false, 1)"
            )
        )
    migrate(url)
    store = Store(url)
    try:
        async with store.read() as tx:
            user = await user_rows.get_user(tx, "u")
            secret = await user_rows.callback_secret(tx, "u")
        assert user is not None and user.name == "ann"
        # 0004 gave the user who existed before it a callback signing secret.
        assert secret is not None and secret.startswith("whsec_")
        server = await insert(store, make_server(user))
        drive = await add_drive(store, user)
        async with store.write() as tx:
            await server_rows.take_claims(tx, server.uuid, [Claim(drive.uuid, "ide:0:0", True)])
            await server_rows.delete_server(tx, server.uuid)
            assert await server_rows.drive_claims(tx, drive.uuid) == []
    finally:
        await store.close()
    with engine.begin() as conn:
        alembic(conn, "downgrade", "0001")
    with engine.connect() as conn:
        assert "servers" not in sa.inspect(conn).get_table_names()
        fks = sa.inspect(conn).get_foreign_keys("claims")
        assert [fk["referred_table"] for fk in fks] == ["drives"]
        assert conn.execute(sa.text("select count(*) from drives")).scalar_one() == 1
    migrate(url)  # and up again


# -- info --------------------------------------------------------------------------


def test_server_info_shows_the_configuration_and_what_running_decided() -> None:
    ann = User(uuid=new_id(), name="ann", admin=False, quota=Quota())
    boot, data, vlan = new_id(), new_id(), new_id()
    server = make_server(
        ann,
        rich_config(boot, data, vlan, "192.0.2.7"),
        ips={0: "192.0.2.7"},
        started=1_700_000_000.75,
        vnc_ip="192.0.2.1",
        vnc_port=5901,
    )
    assert server_info(server) == {
        "server": server.uuid,
        "user": ann.uuid,
        "name": "système ☁",
        "status": "active",
        "started": 1_700_000_000,
        "cpu": 5000,
        "mem": 1024,
        "smp": 3,
        "persistent": "true",
        "ide:0:0": boot,
        "ide:0:0:media": "disk",
        "block:1": data,
        "block:1:media": "cdrom",
        "boot": "ide:0:0",
        "nic:0:model": "virtio",
        "nic:0:dhcp": "192.0.2.7",
        "nic:0:dhcp:ip": "192.0.2.7",
        "nic:0:mac": server.nics[0].mac,
        "nic:1:model": "e1000",
        "nic:1:vlan": vlan,
        "nic:1:mac": "02:00:00:00:00:01",
        "vnc:ip": "192.0.2.1",
        "vnc:port": 5901,
        "vnc:password": "secret",
        "tags": "web prod",
        "user:zeta": "1",
        "user:alpha": "café x=y",
    }
    # Sent back as input, info describes the same server (MACs now fixed).
    info = {k: str(v) for k, v in server_info(server).items()}
    again = parse_server_spec(info)
    assert again.nics[0].mac == server.nics[0].mac
    assert dataclasses.replace(again, nics=server.spec.nics, vnc="auto") == server.spec


def test_server_info_of_a_stopped_and_a_paused_server() -> None:
    ann = User(uuid=new_id(), name="ann", admin=False, quota=Quota())
    config = {"name": "n", "cpu": "100", "mem": "64", "vnc:ip": "auto", "password": "pw"}
    stopped = make_server(ann, config, status=ServerStatus.STOPPED)
    assert server_info(stopped) == {
        "server": stopped.uuid,
        "user": ann.uuid,
        "name": "n",
        "status": "stopped",
        "cpu": 100,
        "mem": 64,
        "smp": 1,
        "persistent": "false",
        "vnc:ip": "auto",
        "vnc:password": "pw",
    }
    paused = dataclasses.replace(stopped, status=ServerStatus.PAUSED, started=5.0)
    assert server_info(paused)["status"] == "paused"  # the owner's suspend (issue 6)
    assert server_info(dataclasses.replace(stopped, status=ServerStatus.STARTING))["status"] == (
        "starting"
    )
