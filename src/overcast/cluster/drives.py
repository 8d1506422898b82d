"""Drives as users see them: ownership, quota, claims, and the data path.

Each call checks everything first (reads only) and then acts; an error from
the checks changes nothing. Another user's drive is :class:`MissingError`
exactly as if it did not exist, unless its ``readers`` (or the library)
let the caller read it, which allows info, read and imaging from it.

A drive is ``busy`` while it is claimed, while it is being imaged (for
everything that changes its data or size), while it is the source of an
unfinished imaging job (for destroy and resize, which would break the job),
and while a write streams into it (for imaging, resize and destroy). The
last is known only to this process: writes are not recorded in the store,
since a crash ends them anyway.
"""

from __future__ import annotations

import asyncio
import time
import uuid as _uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, nullcontext
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
from overcast.store import usage as usage_rows
from overcast.store import users as user_rows
from overcast.store.engine import Tx

__all__ = ["DriveService"]


class DriveService:
    def __init__(self, store: Store, pool: Pool, imager: Imager) -> None:
        self.store = store
        self.pool = pool
        self.imager = imager
        #: Writes streaming into each drive right now.
        self._writers: Counter[str] = Counter()
        #: Drives whose imaging, resize or destroy is between check and commit.
        self._changing: set[str] = set()

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
        async with self.store.read(big=True) as conn:
            return await rows.list_drives(conn, user.uuid)

    async def list_standard(self) -> list[Drive]:
        async with self.store.read(big=True) as conn:
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
        # Refuse an over-quota drive before making its file; the check is
        # repeated in the transaction, which decides.
        async with self.store.read() as conn:
            user.quota.check("drive_bytes", await rows.drive_bytes_used(conn, user.uuid), spec.size)
        # The file first, outside the transaction: qemu-img must not hold the
        # store's write lock. A failure (of qemu-img, which may leave an empty
        # file, or of the transaction) removes it again.
        try:
            await self.pool.create(drive.uuid, drive.size)
            async with self.store.write() as conn:
                await _check_quota(conn, user, 0, drive.size)
                await rows.insert_drive(conn, drive)
        except BaseException:
            self.pool.remove(drive.uuid)
            raise
        return drive

    async def set(self, user: User, uuid: str, changes: DriveChanges) -> Drive:
        drive = await self.owned(user, uuid)
        # Any size, even an unchanged one, guards: the row may change before
        # the transaction reads it.
        resizing = changes.size is not None
        with self._changing_guard(drive.uuid, "resized") if resizing else nullcontext():
            async with self.store.write() as conn:
                current = await rows.get_drive(conn, drive.uuid, lock=True)
                if current is None:
                    raise MissingError(f"no drive {uuid}")
                values = _changed_values(current, changes)
                new_size = values.get("size")
                if isinstance(new_size, int):
                    await self._check_resizable(conn, current, user, new_size)
                    # The old size's use ends here, in the resize's transaction.
                    await usage_rows.bill_drive(conn, current.uuid, time.time(), "resize")
                    # Inside the transaction, so that no imaging job can start
                    # between the checks and the resize; qemu-img is quick.
                    await self.pool.resize(current.uuid, new_size)
                    try:
                        await rows.update_drive(conn, current.uuid, **values)
                    except BaseException:
                        await self.pool.resize(current.uuid, current.size)
                        raise
                elif values:
                    await rows.update_drive(conn, current.uuid, **values)
        return await self.owned(user, uuid)

    async def _check_resizable(self, conn: Tx, drive: Drive, user: User, size: int) -> None:
        _check_idle(drive, "resized")
        await _check_not_a_source(conn, drive.uuid, "resized")
        # Shrinking is always allowed, even for a user already over quota.
        if size > drive.size:
            await _check_quota(conn, user, drive.size, size)

    async def destroy(self, user: User, uuid: str) -> None:
        drive = await self.owned(user, uuid)
        with self._changing_guard(drive.uuid, "destroyed"):
            async with self.store.write() as conn:
                current = await rows.get_drive(conn, drive.uuid, lock=True)
                if current is None:
                    raise MissingError(f"no drive {uuid}")
                _check_idle(current, "destroyed")
                await _check_not_a_source(conn, drive.uuid, "destroyed")
                await usage_rows.bill_drive(conn, drive.uuid, time.time(), "destroy")
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
        # Library drives say how they are stored, and that decides: clients
        # such as libcloud send ``/gunzip`` for every library image.
        if src.format is not None:
            gunzip = src.format is LibraryFormat.GZIP
        elif gunzip and not await asyncio.to_thread(image.is_gzip, self.pool.path(src.uuid)):
            raise UsageError(f"source drive {src.uuid} does not hold gzip data")
        expanded = src.rawsize if src.rawsize is not None else (None if gunzip else src.size)
        if expanded is not None and expanded > dest.size:
            raise UsageError(
                f"source drive {src.uuid} ({expanded} bytes) is larger than drive {dest.uuid}"
            )
        with self._changing_guard(dest.uuid, "imaged"):
            async with self.store.write() as conn:
                current = await rows.get_drive(conn, dest.uuid, lock=True)
                if current is None:
                    raise MissingError(f"no drive {uuid}")
                _check_idle(current, "imaged")
                await rows.set_imaging(conn, dest.uuid, "queued", source=src.uuid, gunzip=gunzip)
        self.imager.start(dest.uuid, src.uuid, gunzip)

    @contextmanager
    def _changing_guard(self, uuid: str, verb: str) -> Iterator[None]:
        """Mark a drive as about to change; ``busy`` while a write streams into it.

        Test and mark happen with no ``await`` between them, so a write and
        an imaging job (say) can never both pass their checks.
        """
        if self._writers[uuid]:
            raise BusyError(f"drive {uuid} is being written and cannot be {verb}")
        if uuid in self._changing:
            raise BusyError(f"drive {uuid} is changing and cannot be {verb}")
        self._changing.add(uuid)
        try:
            yield
        finally:
            self._changing.discard(uuid)

    # -- data ------------------------------------------------------------

    async def read(
        self, user: User, uuid: str, offset: int, size: int
    ) -> tuple[int, AsyncIterator[bytes]]:
        """The length of the range (clamped to the drive's end) and its bytes."""
        drive = await self.readable(user, uuid)
        length = drive.size
        if offset > length:
            raise UsageError(f"offset {offset} is past the end of the drive ({length} bytes)")
        size = min(size, length - offset)
        async with self.store.write() as conn:
            await rows.add_io(conn, drive.uuid, read=size)
        return size, image.read_range(self.pool.path(drive.uuid), offset, size)

    async def write(
        self,
        user: User,
        uuid: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        *,
        length: int | None = None,
    ) -> int:
        """Write a stream at ``offset``; ``length``, if known, is checked first."""
        key = parse_uuid("drive", uuid)
        if key in self._changing:
            raise BusyError(f"drive {key} is changing and cannot be written")
        self._writers[key] += 1
        try:
            drive = await self.owned(user, key)
            _check_idle(drive, "written")
            end = offset + (length or 0)
            if offset > drive.size or end > drive.size:
                raise UsageError(
                    f"writing {length or 0} bytes at {offset} passes the end of the drive "
                    f"({drive.size} bytes)"
                )
            written = await image.write_stream(
                self.pool.path(drive.uuid), offset, drive.size, chunks
            )
        finally:
            self._writers[key] -= 1
            if not self._writers[key]:
                del self._writers[key]
        async with self.store.write() as conn:
            await rows.add_io(conn, drive.uuid, written=written)
        return written

    # -- the library (operator) ------------------------------------------

    async def standard(self, uuid: str) -> Drive | None:
        """The library drive ``uuid``, if there is one."""
        drive = await self._find(uuid)
        return drive if drive is not None and drive.standard else None

    async def import_standard(
        self, file: Path, name: str, *, uuid: str | None = None, media: Media = Media.DISK
    ) -> Drive:
        """Register a library drive from a gzip or raw file."""
        drive_name = parse_name("name", name)
        drive_uuid = parse_uuid("uuid", uuid) if uuid else str(_uuid.uuid4())
        if await self._find(drive_uuid) is not None:
            raise BusyError(f"drive {drive_uuid} exists already")
        fmt, rawsize = await asyncio.to_thread(_measure, file)
        size = await asyncio.to_thread(self.pool.import_file, drive_uuid, file)
        drive = Drive(
            uuid=drive_uuid,
            user=None,
            name=drive_name,
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


def _changed_values(drive: Drive, changes: DriveChanges) -> dict[str, object]:
    """The columns ``changes`` alters on ``drive`` (claim changes checked)."""
    values: dict[str, object] = {}
    if changes.name is not None:
        values["name"] = changes.name
    if changes.claim_type is not None and changes.claim_type is not drive.claim_type:
        if drive.claimed:
            raise BusyError(f"drive {drive.uuid} is claimed by {' '.join(drive.claimed)}")
        values["claim_type"] = changes.claim_type
    if changes.readers is not None:
        values["readers"] = changes.readers
    if changes.tags is not None:
        values["tags"] = changes.tags
    if changes.meta:
        values["meta"] = {**drive.meta, **changes.meta}
    if changes.size is not None and changes.size != drive.size:
        values["size"] = changes.size
    return values


def _check_idle(drive: Drive, verb: str) -> None:
    if drive.imaging is not None:
        raise BusyError(f"drive {drive.uuid} is being imaged and cannot be {verb}")
    if drive.claimed:
        raise BusyError(
            f"drive {drive.uuid} is claimed by {' '.join(drive.claimed)} and cannot be {verb}"
        )


async def _check_quota(conn: Tx, user: User, freed: int, added: int) -> None:
    """Whether the user's drives may grow by ``added - freed`` bytes.

    The user's row is locked first, so that concurrent creates and resizes
    of one user's drives are checked one after the other.
    """
    current = await user_rows.get_user(conn, user.uuid, lock=True)
    quota = current.quota if current is not None else user.quota
    quota.check("drive_bytes", await rows.drive_bytes_used(conn, user.uuid) - freed, added)


async def _check_not_a_source(conn: Tx, uuid: str, verb: str) -> None:
    """An unfinished imaging job reads this drive: it must stay as it is."""
    for dest, source, _gunzip in await rows.pending_images(conn):
        if source == uuid:
            raise BusyError(f"drive {uuid} is being imaged onto {dest} and cannot be {verb}")


def _measure(file: Path) -> tuple[LibraryFormat, int]:
    """The file's format and its size once decompressed (reads gzip whole)."""
    if not file.is_file():
        raise UsageError(f"{file} is not a file")
    if not image.is_gzip(file):
        return LibraryFormat.RAW, file.stat().st_size
    return LibraryFormat.GZIP, image.gunzipped_size(file)
