"""Background imaging jobs: copy a source drive onto a destination.

The job's state lives on the destination's row (``imaging``, its source and
whether to gunzip), written in the transaction that queued it, so a restart
finds every unfinished job and runs it again from the start: a copy is
idempotent, and it replaces the destination only once complete, so an
interrupted or failed job leaves the destination as it was.

``imaging`` reads ``queued`` while a job waits for a slot, then ``NN%``
(written when the copy starts and every :data:`PROGRESS_EVERY` seconds),
and disappears when the job ends. A failed job is logged and its
``imaging`` cleared (see ``_run``).

Stopping (``close``) cancels the jobs; each copy thread is told to stop and
awaited, so shutdown is prompt even in the middle of a large copy, and the
jobs stay queued for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from overcast.host.pool import Pool
from overcast.hypervisor import image
from overcast.model.errors import FailedError, OvercastError
from overcast.store import Store
from overcast.store import drives as rows

__all__ = ["PROGRESS_EVERY", "Imager"]

log = logging.getLogger(__name__)

#: Seconds between progress updates in the store.
PROGRESS_EVERY = 0.25


class Imager:
    def __init__(self, store: Store, pool: Pool, *, concurrency: int = 2) -> None:
        self.store = store
        self.pool = pool
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Why the last job on a drive failed, for :meth:`wait` to raise.
        self._failed: dict[str, str] = {}

    def start(self, dest: str, source: str, gunzip: bool) -> None:
        if dest not in self._tasks:
            self._failed.pop(dest, None)
            task = asyncio.create_task(self._run(dest, source, gunzip), name=f"image-{dest}")
            self._tasks[dest] = task
            task.add_done_callback(lambda _t: self._tasks.pop(dest, None))

    async def resume(self) -> None:
        """Restart the jobs a previous run left unfinished, from the start."""
        async with self.store.write() as conn:
            pending = await rows.pending_images(conn)
            for dest, _source, _gunzip in pending:
                # Its old percentage no longer means anything.
                await rows.set_imaging(conn, dest, "queued")
        for dest, source, gunzip in pending:
            log.info("resuming imaging of %s from %s", dest, source)
            self.start(dest, source, gunzip)

    async def wait(self, dest: str) -> None:
        """Wait for the job on ``dest``; :class:`FailedError` if the copy
        failed (the drive is then as it was before)."""
        task = self._tasks.get(dest)
        if task is not None:
            await asyncio.shield(task)
        if (why := self._failed.pop(dest, None)) is not None:
            raise FailedError(f"imaging drive {dest} failed: {why}")

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, dest: str, source: str, gunzip: bool) -> None:
        # Cancellation (shutdown) passes through: the job stays queued.
        try:
            async with self._slots:
                await self._copy(dest, source, gunzip)
        except OvercastError as err:
            log.error("imaging %s from %s failed: %s", dest, source, err.message)
            self._failed[dest] = err.message
        except Exception as err:
            log.exception("imaging %s from %s failed", dest, source)
            self._failed[dest] = f"{type(err).__name__}: {err}"
        else:
            log.info("imaged %s from %s", dest, source)
        try:
            async with self.store.write() as conn:
                await rows.set_imaging(conn, dest, None)
        except Exception:
            # The next start finds the job still pending and runs it again.
            log.exception("could not mark the imaging of %s finished", dest)

    async def _copy(self, dest: str, source: str, gunzip: bool) -> None:
        async with self.store.write() as conn:
            drive = await rows.get_drive(conn, dest)
            if drive is None:
                return
            await rows.set_imaging(conn, dest, "0%")
        fraction = 0.0
        stop = threading.Event()

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
                stop=stop,
            )
        )
        shown = "0%"
        try:
            while not (await asyncio.wait([copy], timeout=PROGRESS_EVERY))[0]:
                now = f"{min(int(fraction * 100), 99)}%"
                if now != shown:
                    async with self.store.write() as conn:
                        await rows.set_imaging(conn, dest, now)
                    shown = now
        finally:
            if not copy.done():
                # Cancelled, or the store failed: stop the thread, not just wait.
                stop.set()
                await asyncio.gather(copy, return_exceptions=True)
        copy.result()
