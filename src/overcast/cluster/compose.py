"""Operations made of other services' calls: a server on a fresh copy of a
library drive.

OCCI's ``os_tpl`` (and any client that wants "a server running this image")
needs three steps the ElasticHosts API leaves to the client: create a drive,
image it from the library drive, and create the server booting from it once
the copy is complete. Here they run in the fixed phases of every operation:
check everything that can be checked before anything is made (the library
drive, the server's keys with the new drive's slot filled in), then act,
and undo the drive if a later step fails, so that a failed create leaves
nothing behind (a failed copy included). The new drive stays the user's
after the server ends: it is their data.

It owns no state; :class:`DriveService` and :class:`ServerService` keep
theirs.
"""

from __future__ import annotations

import contextlib

from overcast.cluster.drives import DriveService
from overcast.cluster.servers import ServerService
from overcast.model.codec import Keys
from overcast.model.drive import DriveSpec, LibraryFormat, Media
from overcast.model.errors import MissingError, OvercastError, UsageError
from overcast.model.server import Server, parse_server_spec
from overcast.model.user import User

__all__ = ["create_from_library"]


async def create_from_library(
    drives: DriveService,
    servers: ServerService,
    user: User,
    keys: Keys,
    library: str,
    *,
    device: str = "ide:0:0",
    stopped: bool = False,
) -> Server:
    """Create a server whose ``device`` (its boot device) is a new drive of
    the user's imaged from the library drive ``library``.

    ``keys`` are the server's other keys; ``device`` and ``boot`` are set
    here. Returns once the server runs (or, ``stopped``, is defined), like
    :meth:`ServerService.create`; the imaging is waited for first.
    """
    # -- check: nothing is made before these pass
    source = await drives.standard(library)
    if source is None:
        raise MissingError(f"no library drive {library}")
    if source.media is Media.CDROM:
        raise UsageError(f"library drive {library} is a CD-ROM image, not a disk to copy")
    if device in keys:
        raise UsageError(f"{device} is where the copy of library drive {library} goes")
    size = source.rawsize if source.rawsize is not None else source.size
    config = {**keys, device: source.uuid, "boot": device}
    spec = parse_server_spec(config)  # every key, with a stand-in for the new drive

    # -- act, undoing the drive if a later step fails
    name = f"{spec.name} ({source.name})"[:255].strip()
    drive = await drives.create(user, DriveSpec(name=name, size=size))
    try:
        await drives.image(
            user, drive.uuid, source.uuid, gunzip=source.format is LibraryFormat.GZIP
        )
        await drives.imager.wait(drive.uuid)  # raises if the copy failed
        return await servers.create(user, {**config, device: drive.uuid}, stopped=stopped)
    except BaseException:
        with contextlib.suppress(OvercastError):
            await drives.destroy(user, drive.uuid)
        raise
