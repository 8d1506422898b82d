"""The cloud as one object: store, pool and services, opened and closed
together. The API, the CLI and the tests all start here.
"""

from __future__ import annotations

import asyncio
import logging
import os

from overcast.cluster.drives import DriveService
from overcast.cluster.exits import report_of_end
from overcast.cluster.hosts import HostService
from overcast.cluster.imaging import Imager
from overcast.cluster.resources import ResourceService
from overcast.cluster.servers import Capacity, ServerService
from overcast.cluster.users import UserService
from overcast.config import Settings
from overcast.events.callbacks import check_callback_url
from overcast.events.delivery import Deliverer
from overcast.events.feed import EventFeed
from overcast.events.ledger import Ledger
from overcast.host.agent import GuestEnd, HostAgent
from overcast.host.client import HostClient, LocalHost
from overcast.host.pool import Pool
from overcast.hypervisor.kvm import choose_accel
from overcast.hypervisor.qemu import QemuDriver
from overcast.model.server import MHZ_PER_CORE
from overcast.model.user import User
from overcast.store import Store, migrate
from overcast.store.events import Event

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
        self.hosts = HostService(self.store)
        self.feed = EventFeed(self.store)
        self.ledger = Ledger(self.store, settings.billing_interval)
        self.deliverer = Deliverer(
            self.store,
            self.users.signing_key,
            timeout=settings.callback_timeout,
            first_retry=settings.callback_retry,
            check=self._check_delivery,
        )
        #: Servers and the host exist once :meth:`open` ran with ``background``.
        self.servers: ServerService

        self.host: HostClient | None = None

    @classmethod
    async def open(cls, settings: Settings, *, background: bool = True) -> Cloud:
        """Migrate the store; with ``background``, also run this machine's
        host (adopting the guests a previous run left) and resume imaging.

        Operator commands open without ``background``: they run no guests.
        """
        settings.data.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrate, settings.store)
        cloud = cls(settings)
        if background:
            try:
                await cloud._start_host()
                await cloud.imager.resume()
                cloud.deliverer.start()
                cloud.ledger.start()
            except BaseException:
                await cloud.close()
                raise
        return cloud

    async def _start_host(self) -> None:
        verdict = await choose_accel(self.settings.data / "kvm")
        log.info("accelerator %s: %s", verdict.accel, verdict.reason)

        async def on_exit(end: GuestEnd) -> None:
            await self.servers.host_exited(report_of_end(end))

        agent = HostAgent(self.settings.data / "run", QemuDriver(verdict.accel), on_exit)
        self.host = LocalHost(agent)
        capacity = _local_capacity()
        await self.hosts.register_local(capacity.cpu, capacity.mem)
        self.servers = ServerService(
            self.store,
            self.pool,
            self.host,
            capacity,
            check_callback=self._check_callback,
            on_event=self._event_committed,
        )
        await agent.adopt_all()
        await self.servers.reconcile()

    async def _check_callback(self, user: User, url: str) -> None:
        """Users' callbacks go to public addresses unless the operator
        allows others; an administrator's (a host reporting to its manager)
        may go anywhere."""
        await check_callback_url(url, allow_private=self.settings.callback_private or user.admin)

    async def _check_delivery(self, event: Event, url: str) -> None:
        user = await self.users.get(event.user)
        await self._check_callback(user, url)

    async def _event_committed(self) -> None:
        self.deliverer.wake()
        await self.feed.notify()

    async def close(self) -> None:
        """Let go of the guests (they keep running), stop the background
        work, then the store, whatever the earlier steps do."""
        try:
            await self.ledger.stop()
            await self.deliverer.stop()
            if self.host is not None:
                await self.host.close()
        finally:
            try:
                await self.imager.close()
            finally:
                await self.store.close()


def _local_capacity() -> Capacity:
    """This machine: all its memory but 512 MiB for itself; 2 GHz a core."""
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return Capacity(cpu=(os.cpu_count() or 1) * MHZ_PER_CORE, mem=max(mem_kib // 1024 - 512, 0))
