"""User rows: lookup by key digest (auth), creation, quota."""

from __future__ import annotations

import uuid as _uuid
from typing import Any

import sqlalchemy as sa

from overcast.model.user import Quota, User, new_callback_secret
from overcast.store.engine import Tx
from overcast.store.rows import now
from overcast.store.tables import drives, ips, servers, users, vlans

__all__ = [
    "callback_secret",
    "count_users",
    "delete_user",
    "get_user",
    "insert_user",
    "list_users",
    "owned_kinds",
    "set_callback_secret",
    "set_quota",
    "set_user_key",
    "user_by_digest",
]


def _user(row: Any) -> User:
    return User(
        uuid=row.uuid,
        name=row.name,
        admin=row.admin,
        quota=Quota(
            drive_bytes=row.quota_drive_bytes,
            servers=row.quota_servers,
            cpu=row.quota_cpu,
            mem=row.quota_mem,
        ),
    )


async def insert_user(
    conn: Tx, name: str, key_digest: str, *, admin: bool, uuid: str | None = None
) -> User:
    user = User(uuid=uuid or str(_uuid.uuid4()), name=name, admin=admin, quota=Quota())
    await conn.execute(
        users.insert().values(
            uuid=user.uuid,
            name=name,
            key_digest=key_digest,
            admin=admin,
            created=now(),
            callback_secret=new_callback_secret(),
        )
    )
    return user


async def user_by_digest(conn: Tx, digest: str) -> User | None:
    row = (await conn.execute(users.select().where(users.c.key_digest == digest))).first()
    return _user(row) if row else None


async def get_user(conn: Tx, uuid: str, *, lock: bool = False) -> User | None:
    """The user; ``lock`` holds its row until commit, which serializes the
    quota checks of concurrent writes for one user (see :mod:`overcast.store.engine`).
    """
    query = users.select().where(users.c.uuid == uuid)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    return _user(row) if row else None


async def list_users(conn: Tx) -> list[User]:
    rows = await conn.execute(users.select().order_by(users.c.created, users.c.uuid))
    return [_user(r) for r in rows]


async def count_users(conn: Tx, *, admin: bool | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(users)
    if admin is not None:
        query = query.where(users.c.admin == admin)
    return int((await conn.execute(query)).scalar_one())


async def set_quota(conn: Tx, uuid: str, quota: Quota) -> None:
    await conn.execute(
        users.update()
        .where(users.c.uuid == uuid)
        .values(
            quota_drive_bytes=quota.drive_bytes,
            quota_servers=quota.servers,
            quota_cpu=quota.cpu,
            quota_mem=quota.mem,
        )
    )


async def callback_secret(conn: Tx, uuid: str) -> str | None:
    """The user's callback signing secret; None for no such user."""
    query = sa.select(users.c.callback_secret).where(users.c.uuid == uuid)
    return (await conn.execute(query)).scalar_one_or_none()


async def set_callback_secret(conn: Tx, uuid: str, secret: str) -> None:
    await conn.execute(users.update().where(users.c.uuid == uuid).values(callback_secret=secret))


async def set_user_key(conn: Tx, uuid: str, key_digest: str) -> None:
    await conn.execute(users.update().where(users.c.uuid == uuid).values(key_digest=key_digest))


async def delete_user(conn: Tx, uuid: str) -> None:
    await conn.execute(users.delete().where(users.c.uuid == uuid))


async def owned_kinds(conn: Tx, uuid: str) -> list[str]:
    """Which kinds of object (servers, drives, ips, vlans) the user still owns.

    Servers first: their claims are what keeps drives busy.
    """
    kinds = []
    for table in (servers, drives, ips, vlans):
        query = sa.select(sa.func.count()).select_from(table).where(table.c.user == uuid)
        if (await conn.execute(query)).scalar_one():
            kinds.append(table.name)
    return kinds
