"""Drive rows and their claims; imaging job state lives on the drive row."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from overcast.model.drive import ClaimType, Drive, LibraryFormat, Media
from overcast.store.engine import Tx
from overcast.store.rows import join_words, now, split_words
from overcast.store.tables import claims, drives

__all__ = [
    "add_io",
    "claimed_by",
    "delete_drive",
    "drive_bytes_used",
    "get_drive",
    "insert_drive",
    "list_drives",
    "pending_images",
    "set_imaging",
    "update_drive",
]


def _drive(row: Any, claimed: tuple[str, ...]) -> Drive:
    return Drive(
        uuid=row.uuid,
        user=row.user,
        name=row.name,
        size=row.size,
        claim_type=ClaimType(row.claim_type),
        readers=split_words(row.readers),
        tags=split_words(row.tags),
        meta=dict(row.meta),
        imaging=row.imaging,
        claimed=claimed,
        read_bytes=row.read_bytes,
        read_requests=row.read_requests,
        write_bytes=row.write_bytes,
        write_requests=row.write_requests,
        media=Media(row.media) if row.media else None,
        format=LibraryFormat(row.format) if row.format else None,
        rawsize=row.rawsize,
    )


async def _claims_of(conn: Tx, uuids: Iterable[str] | None) -> dict[str, list[str]]:
    query = sa.select(claims.c.drive, claims.c.server, claims.c.device)
    if uuids is not None:
        query = query.where(claims.c.drive.in_(list(uuids)))
    found: dict[str, list[str]] = defaultdict(list)
    for row in await conn.execute(query.order_by(claims.c.server)):
        found[row.drive].append(f"{row.server}:{row.device}")
    return found


async def insert_drive(conn: Tx, drive: Drive) -> None:
    await conn.execute(
        drives.insert().values(
            uuid=drive.uuid,
            user=drive.user,
            name=drive.name,
            size=drive.size,
            claim_type=drive.claim_type.value,
            readers=join_words(drive.readers),
            tags=join_words(drive.tags),
            meta=dict(drive.meta),
            imaging=drive.imaging,
            image_gunzip=False,
            read_bytes=0,
            read_requests=0,
            write_bytes=0,
            write_requests=0,
            media=drive.media.value if drive.media else None,
            format=drive.format.value if drive.format else None,
            rawsize=drive.rawsize,
            created=now(),
        )
    )


async def get_drive(conn: Tx, uuid: str, *, lock: bool = False) -> Drive | None:
    """The drive; ``lock`` holds its row until commit (see :mod:`overcast.store.engine`)."""
    # One round trip: the drive's row once per claim (or once, unclaimed).
    query = (
        sa.select(drives, claims.c.server, claims.c.device)
        .outerjoin(claims, claims.c.drive == drives.c.uuid)
        .where(drives.c.uuid == uuid)
        .order_by(claims.c.server)
    )
    if lock:
        query = query.with_for_update(of=drives)
    found = (await conn.execute(query)).all()
    if not found:
        return None
    claimed = tuple(f"{r.server}:{r.device}" for r in found if r.server is not None)
    return _drive(found[0], claimed)


async def list_drives(conn: Tx, user: str | None) -> list[Drive]:
    """The user's drives, or the library's when ``user`` is None.

    Runs as one piece of work on the connection (off the event loop for a
    ``big`` read): a user may have thousands of drives.
    """
    return await conn.run_sync(functools.partial(_list_drives, user=user))


def _list_drives(conn: sa.Connection, *, user: str | None) -> list[Drive]:
    owner = drives.c.user.is_(None) if user is None else drives.c.user == user
    # One claims query for the whole list rather than one per drive.
    claimed: dict[str, list[str]] = defaultdict(list)
    query = (
        sa.select(claims.c.drive, claims.c.server, claims.c.device)
        .join(drives, drives.c.uuid == claims.c.drive)
        .where(owner)
        .order_by(claims.c.server)
    )
    for c in conn.execute(query):
        claimed[c.drive].append(f"{c.server}:{c.device}")
    rows = conn.execute(drives.select().where(owner).order_by(drives.c.created, drives.c.uuid))
    return [_drive(r, tuple(claimed.get(r.uuid, ()))) for r in rows]


async def claimed_by(conn: Tx, uuid: str) -> list[str]:
    return (await _claims_of(conn, [uuid])).get(uuid, [])


async def update_drive(conn: Tx, uuid: str, **values: Any) -> None:
    if "claim_type" in values:
        values["claim_type"] = values["claim_type"].value
    for words in ("readers", "tags"):
        if words in values:
            values[words] = join_words(values[words])
    if "meta" in values:
        values["meta"] = dict(values["meta"])
    await conn.execute(drives.update().where(drives.c.uuid == uuid).values(**values))


async def delete_drive(conn: Tx, uuid: str) -> None:
    await conn.execute(drives.delete().where(drives.c.uuid == uuid))


async def drive_bytes_used(conn: Tx, user: str) -> int:
    query = sa.select(sa.func.coalesce(sa.func.sum(drives.c.size), 0)).where(drives.c.user == user)
    return int((await conn.execute(query)).scalar_one())


async def set_imaging(
    conn: Tx,
    uuid: str,
    progress: str | None,
    *,
    source: str | None = None,
    gunzip: bool = False,
) -> None:
    """Queue, advance or (``progress=None``) finish the imaging job of a drive."""
    values: dict[str, Any] = {"imaging": progress}
    if progress is None:
        values.update(image_source=None, image_gunzip=False)
    elif source is not None:
        values.update(image_source=source, image_gunzip=gunzip)
    await conn.execute(drives.update().where(drives.c.uuid == uuid).values(**values))


async def pending_images(conn: Tx) -> list[tuple[str, str, bool]]:
    """(destination, source, gunzip) of every queued or interrupted job."""
    rows = await conn.execute(
        sa.select(drives.c.uuid, drives.c.image_source, drives.c.image_gunzip)
        .where(drives.c.image_source.is_not(None))
        .order_by(drives.c.created)
    )
    return [(r.uuid, r.image_source, r.image_gunzip) for r in rows]


async def add_io(conn: Tx, uuid: str, *, read: int = 0, written: int = 0) -> None:
    """Count a read or write request and its bytes."""
    await conn.execute(
        drives.update()
        .where(drives.c.uuid == uuid)
        .values(
            read_bytes=drives.c.read_bytes + read,
            read_requests=drives.c.read_requests + (1 if read else 0),
            write_bytes=drives.c.write_bytes + written,
            write_requests=drives.c.write_requests + (1 if written else 0),
        )
    )
