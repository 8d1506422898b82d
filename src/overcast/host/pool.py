"""The drive pool: where drive images live on disk.

One directory holds every drive's image, named by UUID; library drives keep
their file as imported (gzip or raw). With many hosts this directory is the
shared storage every host sees.
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
        image.remove_image(self.path(uuid))

    def import_file(self, uuid: str, source: Path) -> int:
        """Copy a library file in; returns its size. Blocking."""
        tmp = self.path(uuid).with_suffix(".part")
        shutil.copyfile(source, tmp)
        tmp.rename(self.path(uuid))
        return self.path(uuid).stat().st_size
