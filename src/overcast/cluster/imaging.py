"""Background imaging jobs: copy a source drive onto a destination.

The job's state lives on the destination's row (``imaging``, its source and
whether to gunzip), written in the transaction that queued it, so a restart
finds every unfinished job and runs it again from the start: a copy is
idempotent. Progress is written back every half second.
"""

from __future__ import annotations

import asyncio
import logging

from overcast.host.pool import Pool
from overcast.hypervisor import image
from overcast.model.errors import OvercastError
from overcast.store import Store
from overcast.store import drives as rows

__all__ = ["Imager"]

log = logging.getLogger(__name__)


class Imager:
    def __init__(self, store: Store, pool: Pool, *, concurrency: int = 2) -> None:
        self.store = store
        self.pool = pool
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, dest: str, source: str, gunzip: bool) -> None:
        if dest not in self._tasks:
            task = asyncio.create_task(self._run(dest, source, gunzip), name=f"image-{dest}")
            self._tasks[dest] = task
            task.add_done_callback(lambda _t: self._tasks.pop(dest, None))

    async def resume(self) -> None:
        """Restart the jobs a previous run left unfinished."""
        async with self.store.read() as conn:
            pending = await rows.pending_images(conn)
        for dest, source, gunzip in pending:
            log.info("resuming imaging of %s from %s", dest, source)
            self.start(dest, source, gunzip)

    async def wait(self, dest: str) -> None:
        """Wait for the job on ``dest`` (tests and the CLI use this)."""
        task = self._tasks.get(dest)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, dest: str, source: str, gunzip: bool) -> None:
        async with self._slots:
            async with self.store.read() as conn:
                drive = await rows.get_drive(conn, dest)
            if drive is None:
                return
            fraction = 0.0

            def progress(value: float) -> None:
                nonlocal fraction
                fraction = value

            copy = asyncio.create_task(
                asyncio.to_thread(
                    image.copy_image,
                    self.pool.path(source),
                    self.pool.path(dest),
                    gunzip=gunzip,
                    limit=drive.size,
                    progress=progress,
                )
            )
            try:
                while not copy.done():
                    await asyncio.wait([copy], timeout=0.5)
                    shown = f"{min(int(fraction * 100), 99)}%"
                    async with self.store.write() as conn:
                        await rows.set_imaging(conn, dest, shown)
                copy.result()
            except OvercastError as err:
                log.error("imaging %s from %s failed: %s", dest, source, err)
            except OSError as err:
                log.error("imaging %s from %s failed: %s", dest, source, err)
            except asyncio.CancelledError:
                # Shutting down: leave the job queued for the next start.
                await asyncio.gather(copy, return_exceptions=True)
                raise
            async with self.store.write() as conn:
                await rows.set_imaging(conn, dest, None)
