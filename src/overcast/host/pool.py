"""The drive pool: where drive images live on disk.

One directory holds every drive's image, named by UUID; library drives keep
their file as imported (gzip or raw). An imaging job builds its copy beside
the image (``UUID.imaging``) until it replaces it. With many hosts this
directory is the shared storage every host sees.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from overcast.hypervisor import image

__all__ = ["Pool"]


class Pool:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, uuid: str) -> Path:
        return self.root / uuid

    async def create(self, uuid: str, size: int) -> None:
        await image.create_image(self.path(uuid), size)

    async def resize(self, uuid: str, size: int) -> None:
        await image.resize_image(self.path(uuid), size)

    def remove(self, uuid: str) -> None:
        """Remove the image and any unfinished imaging copy of it."""
        image.remove_image(self.path(uuid))

    def import_file(self, uuid: str, source: Path) -> int:
        """Copy a library file in; returns its size. Blocking.

        The copy only takes the drive's name once complete, so a failed
        import leaves nothing behind.
        """
        tmp = self.root / f"{uuid}.part"
        try:
            shutil.copyfile(source, tmp)
            tmp.rename(self.path(uuid))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.path(uuid).stat().st_size
