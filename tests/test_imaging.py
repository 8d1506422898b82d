"""The imager tells whoever waits that a copy failed (``os_tpl`` creates wait).

In-process, on a real SQLite store and drive files: the source's file is
taken away before the copy, so the copy fails; the waiter gets a
:class:`FailedError`, the destination is left as it was and no longer
imaging, and a later good copy of the same drive waits cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from overcast.cluster.drives import DriveService
from overcast.cluster.imaging import Imager
from overcast.host.pool import Pool
from overcast.model.drive import DriveSpec
from overcast.model.errors import FailedError
from overcast.model.user import User
from overcast.store import Store, migrate
from overcast.store import users as user_rows


async def test_a_failed_copy_is_raised_to_the_waiter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    migrate(url)
    store = Store(url)
    pool = Pool(tmp_path / "drives")
    imager = Imager(store, pool)
    drives = DriveService(store, pool, imager)
    try:
        async with store.write() as tx:
            user: User = await user_rows.insert_user(tx, "ann", "d" * 64, admin=False)
        source = await drives.create(user, DriveSpec(name="src", size=1 << 20))
        dest = await drives.create(user, DriveSpec(name="dst", size=1 << 20))
        pool.path(source.uuid).rename(tmp_path / "away")
        await drives.image(user, dest.uuid, source.uuid, gunzip=False)
        with pytest.raises(FailedError, match=f"imaging drive {dest.uuid} failed"):
            await imager.wait(dest.uuid)
        assert (await drives.owned(user, dest.uuid)).imaging is None
        assert pool.path(dest.uuid).read_bytes() == bytes(1 << 20)
        # Told once; a good copy afterwards waits cleanly.
        await imager.wait(dest.uuid)
        (tmp_path / "away").rename(pool.path(source.uuid))
        pool.path(source.uuid).write_bytes(b"x" * (1 << 20))
        await drives.image(user, dest.uuid, source.uuid, gunzip=False)
        await imager.wait(dest.uuid)
        assert pool.path(dest.uuid).read_bytes() == b"x" * (1 << 20)
    finally:
        await imager.close()
        await store.close()
