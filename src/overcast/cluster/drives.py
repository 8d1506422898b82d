"""Drives as users see them: ownership, quota, claims, and the data path.

Each call checks everything first (reads only) and then acts; an error from
the checks changes nothing. Another user's drive is :class:`MissingError`
exactly as if it did not exist, unless its ``readers`` (or the library)
let the caller read it, which allows info, read and imaging from it.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid as _uuid
from collections.abc import AsyncIterator
from pathlib import Path

from overcast.cluster.imaging import Imager
from overcast.host.pool import Pool
from overcast.hypervisor import image
from overcast.model.drive import (
    ClaimType,
    Drive,
    DriveChanges,
    DriveSpec,
    LibraryFormat,
    Media,
)
from overcast.model.errors import BusyError, MissingError, UsageError
from overcast.model.keys import parse_name, parse_uuid
from overcast.model.user import User
from overcast.store import Store
from overcast.store import drives as rows

__all__ = ["DriveService"]


class DriveService:
    def __init__(self, store: Store, pool: Pool, imager: Imager) -> None:
        self.store = store
        self.pool = pool
        self.imager = imager

    # -- lookups ---------------------------------------------------------

    async def _find(self, uuid: str) -> Drive | None:
        async with self.store.read() as conn:
            return await rows.get_drive(conn, parse_uuid("drive", uuid))

    async def owned(self, user: User, uuid: str) -> Drive:
        """The caller's own drive (what changing calls need)."""
        drive = await self._find(uuid)
        if drive is None or drive.user != user.uuid:
            raise MissingError(f"no drive {uuid}")
        return drive

    async def readable(self, user: User, uuid: str) -> Drive:
        """A drive the caller may read: its own, the library's, or shared with it."""
        drive = await self._find(uuid)
        if drive is None or not drive.readable_by(user.uuid):
            raise MissingError(f"no drive {uuid}")
        return drive

    async def of_user(self, user: User) -> list[Drive]:
        async with self.store.read() as conn:
            return await rows.list_drives(conn, user.uuid)

    async def list_standard(self) -> list[Drive]:
        async with self.store.read() as conn:
            return await rows.list_drives(conn, None)

    # -- changes ---------------------------------------------------------

    async def create(self, user: User, spec: DriveSpec) -> Drive:
        drive = Drive(
            uuid=str(_uuid.uuid4()),
            user=user.uuid,
            name=spec.name,
            size=spec.size,
            claim_type=spec.claim_type,
            readers=spec.readers,
            tags=spec.tags,
            meta=spec.meta,
        )
        # The file first, outside the transaction: qemu-img must not hold the
        # store's write lock. A failed transaction removes it again.
        await self.pool.create(drive.uuid, drive.size)
        try:
            async with self.store.write() as conn:
                used = await rows.drive_bytes_used(conn, user.uuid)
                user.quota.check("drive_bytes", used, drive.size)
                await rows.insert_drive(conn, drive)
        except BaseException:
            self.pool.remove(drive.uuid)
            raise
        return drive

    async def set(self, user: User, uuid: str, changes: DriveChanges) -> Drive:
        drive = await self.owned(user, uuid)
        values: dict[str, object] = {}
        if changes.name is not None:
            values["name"] = changes.name
        if changes.claim_type is not None:
            if changes.claim_type is not drive.claim_type and drive.claimed:
                raise BusyError(f"drive {uuid} is claimed by {' '.join(drive.claimed)}")
            values["claim_type"] = changes.claim_type
        if changes.readers is not None:
            values["readers"] = changes.readers
        if changes.tags is not None:
            values["tags"] = changes.tags
        if changes.meta:
            values["meta"] = {**drive.meta, **changes.meta}
        resize = changes.size is not None and changes.size != drive.size
        async with self.store.write() as conn:
            current = await rows.get_drive(conn, drive.uuid)
            if current is None:
                raise MissingError(f"no drive {uuid}")
            if resize:
                assert changes.size is not None
                _check_idle(current, "resized")
                used = await rows.drive_bytes_used(conn, user.uuid)
                user.quota.check("drive_bytes", used - current.size, changes.size)
                await self.pool.resize(drive.uuid, changes.size)
                values["size"] = changes.size
            if values:
                await rows.update_drive(conn, drive.uuid, **values)
        return await self.owned(user, uuid)

    async def destroy(self, user: User, uuid: str) -> None:
        drive = await self.owned(user, uuid)
        async with self.store.write() as conn:
            current = await rows.get_drive(conn, drive.uuid)
            if current is None:
                raise MissingError(f"no drive {uuid}")
            _check_idle(current, "destroyed")
            await rows.delete_drive(conn, drive.uuid)
        self.pool.remove(drive.uuid)

    async def image(self, user: User, uuid: str, source: str, *, gunzip: bool) -> None:
        """Queue a copy of ``source`` onto the drive; progress shows in info."""
        dest = await self.owned(user, uuid)
        src = await self.readable(user, source)
        if src.uuid == dest.uuid:
            raise UsageError("a drive cannot be imaged from itself")
        if src.imaging is not None:
            raise BusyError(f"source drive {src.uuid} is being imaged")
        # Library drives say how they are stored; ``/gunzip`` is then implied
        # (clients such as libcloud always send it, even for raw images).
        if src.format is not None:
            gunzip = src.format is LibraryFormat.GZIP
        expanded = src.rawsize if src.rawsize is not None else (None if gunzip else src.size)
        if expanded is not None and expanded > dest.size:
            raise UsageError(
                f"source drive {src.uuid} ({expanded} bytes) is larger than drive {dest.uuid}"
            )
        async with self.store.write() as conn:
            current = await rows.get_drive(conn, dest.uuid)
            if current is None:
                raise MissingError(f"no drive {uuid}")
            _check_idle(current, "imaged")
            await rows.set_imaging(conn, dest.uuid, "queued", source=src.uuid, gunzip=gunzip)
        self.imager.start(dest.uuid, src.uuid, gunzip)

    # -- data ------------------------------------------------------------

    async def read(self, user: User, uuid: str, offset: int, size: int) -> AsyncIterator[bytes]:
        drive = await self.readable(user, uuid)
        length = drive.size
        if offset > length:
            raise UsageError(f"offset {offset} is past the end of the drive ({length} bytes)")
        size = min(size, length - offset)
        async with self.store.write() as conn:
            await rows.add_io(conn, drive.uuid, read=size)
        return image.read_range(self.pool.path(drive.uuid), offset, size)

    async def write(self, user: User, uuid: str, offset: int, chunks: AsyncIterator[bytes]) -> int:
        drive = await self.owned(user, uuid)
        _check_idle(drive, "written")
        if offset > drive.size:
            raise UsageError(f"offset {offset} is past the end of the drive ({drive.size} bytes)")
        written = await image.write_stream(self.pool.path(drive.uuid), offset, drive.size, chunks)
        async with self.store.write() as conn:
            await rows.add_io(conn, drive.uuid, written=written)
        return written

    # -- the library (operator) ------------------------------------------

    async def import_standard(
        self, file: Path, name: str, *, uuid: str | None = None, media: Media = Media.DISK
    ) -> Drive:
        """Register a library drive from a gzip or raw file."""
        drive_uuid = parse_uuid("uuid", uuid) if uuid else str(_uuid.uuid4())
        if await self._find(drive_uuid) is not None:
            raise BusyError(f"drive {drive_uuid} exists already")
        fmt, rawsize = await asyncio.to_thread(_measure, file)
        size = await asyncio.to_thread(self.pool.import_file, drive_uuid, file)
        drive = Drive(
            uuid=drive_uuid,
            user=None,
            name=parse_name("name", name),
            size=size,
            claim_type=ClaimType.SHARED,
            media=media,
            format=fmt,
            rawsize=rawsize,
        )
        try:
            async with self.store.write() as conn:
                await rows.insert_drive(conn, drive)
        except BaseException:
            self.pool.remove(drive_uuid)
            raise
        return drive


def _check_idle(drive: Drive, verb: str) -> None:
    if drive.imaging is not None:
        raise BusyError(f"drive {drive.uuid} is being imaged and cannot be {verb}")
    if drive.claimed:
        raise BusyError(
            f"drive {drive.uuid} is claimed by {' '.join(drive.claimed)} and cannot be {verb}"
        )


def _measure(file: Path) -> tuple[LibraryFormat, int]:
    """The file's format and its size once decompressed (reads gzip whole)."""
    if not file.is_file():
        raise UsageError(f"{file} is not a file")
    with open(file, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        return LibraryFormat.RAW, file.stat().st_size
    total = 0
    try:
        with gzip.open(file, "rb") as f:
            while chunk := f.read(image.CHUNK):
                total += len(chunk)
    except (OSError, EOFError) as err:
        raise UsageError(f"{file} is not valid gzip: {err}") from err
    return LibraryFormat.GZIP, total
