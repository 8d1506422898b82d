"""``overcast serve --store postgresql://…``: the cloud on PostgreSQL.

The server is a real subprocess; what it stores is checked in the database
itself, with a separate SQLAlchemy engine, so nothing can quietly fall back
to a SQLite file in the data directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cloud import Cloud, new_user, start_cloud, stop_cloud
from pg import fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def store_url(pg_url: str) -> str:
    return fresh_database(pg_url)


@pytest.fixture(scope="module")
def pg_cloud(tmp_path_factory: pytest.TempPathFactory, store_url: str) -> Iterator[Cloud]:
    c = start_cloud(tmp_path_factory.mktemp("pgcloud") / "var", store=store_url)
    try:
        yield c
    finally:
        stop_cloud(c)


@pytest.fixture(scope="module")
def db(store_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(store_url)
    try:
        yield engine
    finally:
        engine.dispose()


def keys(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return dict(line.split(" ", 1) for line in response.text.splitlines())


def row(db: sa.Engine, query: str, **params: Any) -> Any:
    with db.connect() as conn:
        return conn.execute(sa.text(query), params).one_or_none()


def test_drives_live_in_postgres(pg_cloud: Cloud, db: sa.Engine) -> None:
    with new_user(pg_cloud) as user:
        info = keys(user.post("/drives/create", content="name pgdrive\nsize 1M\n"))
        drive = info["drive"]
        assert drive in user.get("/drives/list").text.split()
        assert keys(user.get(f"/drives/{drive}/info"))["name"] == "pgdrive"
        found = row(db, 'select "user", name, size from drives where uuid = :d', d=drive)
        assert found == (info["user"], "pgdrive", 1 << 20)

        r = user.post(f"/drives/{drive}/write", content=b"x" * 512)
        assert r.status_code == 204, r.text
        counted = row(db, "select write_bytes, write_requests from drives where uuid = :d", d=drive)
        assert counted == (512, 1)

        assert user.post(f"/drives/{drive}/destroy").status_code == 204
        assert drive not in user.get("/drives/list").text.split()
        assert row(db, "select uuid from drives where uuid = :d", d=drive) is None


def test_the_store_is_postgres_not_a_file(pg_cloud: Cloud, db: sa.Engine) -> None:
    admin = row(db, "select name, admin from users where uuid = :u", u=pg_cloud.admin_uuid)
    assert admin == ("admin", True)
    assert row(db, "select version_num from alembic_version") is not None
    assert not list(pg_cloud.data.glob("*.db*"))


def test_the_cli_writes_to_the_running_clouds_database(
    pg_cloud: Cloud, db: sa.Engine, store_url: str
) -> None:
    done = pg_cloud.overcast("admin", "--store", store_url, "user", "create", "from-cli")
    assert done.returncode == 0, done.stderr
    made = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert row(db, "select name from users where uuid = :u", u=made["uuid"]) == ("from-cli",)
    with pg_cloud.client(made["uuid"], made["secret"]) as client:
        assert client.get("/drives/list").status_code == 200


def test_suspend_and_hot_plug_on_postgres(pg_cloud: Cloud, db: sa.Engine) -> None:
    """Suspend/resume and a hot-plugged SCSI disk (through OCCI) with the
    store on PostgreSQL: the rows say what the API says."""
    occi = {"content-type": "application/occi+json", "accept": "application/occi+json"}
    with new_user(pg_cloud) as user:
        drive = keys(user.post("/drives/create", content="name pgdisk\nsize 1M\n"))["drive"]
        server = keys(user.post("/servers/create", content="name pgs\ncpu 500\nmem 64\n"))["server"]
        try:
            assert keys(user.post(f"/servers/{server}/suspend"))["status"] == "paused"
            assert row(db, "select status from servers where uuid = :s", s=server)[0] == "paused"
            assert keys(user.post(f"/servers/{server}/resume"))["status"] == "active"
            link = {
                "kind": "http://schemas.ogf.org/occi/infrastructure#storagelink",
                "attributes": {
                    "occi.core.source": f"/compute/{server}",
                    "occi.core.target": f"/storage/{drive}",
                    "occi.storagelink.deviceid": "scsi:0:0",
                },
            }
            r = user.post("/storagelink/", json=link, headers=occi)
            assert r.status_code == 201, r.text
            claim = row(db, "select server, device from claims where drive = :d", d=drive)
            assert tuple(claim) == (server, "scsi:0:0")
            assert keys(user.get(f"/servers/{server}/info"))["scsi:0:0"] == drive
            r = user.delete(f"/storagelink/{server}_scsi:0:0", headers=occi)
            assert r.status_code == 200, r.text
            assert row(db, "select server from claims where drive = :d", d=drive) is None
        finally:
            user.post(f"/servers/{server}/destroy")
            user.post(f"/drives/{drive}/destroy")
