"""The cloud as one object: store, pool and services, opened and closed
together. The API, the CLI and the tests all start here.
"""

from __future__ import annotations

import asyncio
import logging

from overcast.cluster.drives import DriveService
from overcast.cluster.imaging import Imager
from overcast.cluster.resources import ResourceService
from overcast.cluster.users import UserService
from overcast.config import Settings
from overcast.host.pool import Pool
from overcast.store import Store, migrate

__all__ = ["Cloud"]

log = logging.getLogger(__name__)


class Cloud:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.store)
        self.pool = Pool(settings.drives_dir)
        self.imager = Imager(self.store, self.pool)
        self.users = UserService(self.store)
        self.drives = DriveService(self.store, self.pool, self.imager)
        self.resources = ResourceService(self.store)

    @classmethod
    async def open(cls, settings: Settings, *, background: bool = True) -> Cloud:
        """Migrate the store and start the background work (imaging)."""
        settings.data.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrate, settings.store)
        cloud = cls(settings)
        if background:
            try:
                await cloud.imager.resume()
            except BaseException:
                await cloud.close()
                raise
        return cloud

    async def close(self) -> None:
        """Stop the background work, then the store (whatever the first does)."""
        try:
            await self.imager.close()
        finally:
            await self.store.close()
