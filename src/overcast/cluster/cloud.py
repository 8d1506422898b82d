"""The cloud as one object: store, pool and services, opened and closed
together. The API, the CLI and the tests all start here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from overcast.cluster.drives import DriveService
from overcast.cluster.exits import report_of_end
from overcast.cluster.failover import Failover
from overcast.cluster.fleet import Fleet
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
from overcast.host.lease import HostLease, guest_killer
from overcast.host.pool import Pool
from overcast.hypervisor.kvm import choose_accel
from overcast.hypervisor.qemu import QemuDriver
from overcast.model.host import LOCAL
from overcast.model.server import MHZ_PER_CORE
from overcast.model.user import User
from overcast.store import Store, migrate
from overcast.store.etcd import Etcd
from overcast.store.events import Event

__all__ = ["Cloud"]

log = logging.getLogger(__name__)

#: How long opening waits to join etcd before giving up (s).
LEASE_JOIN_TIMEOUT = 30.0


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
        self.fleet: Fleet | None = None
        #: With ``etcd`` set: this host's lease, the right to run guests.
        self.lease: HostLease | None = None
        #: With ``etcd`` set on a manager: the failover of its hosts.
        self.failover: Failover | None = None
        self._etcd: Etcd | None = None
        self._registration: asyncio.Task[None] | None = None

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

        async def on_exit(host: str, end: GuestEnd) -> None:
            await self.servers.host_exited(report_of_end(end, host))

        async def on_local_exit(end: GuestEnd) -> None:
            await on_exit(LOCAL, end)

        settings = self.settings
        if settings.etcd:
            self._etcd = Etcd(settings.etcd)
        agent: HostAgent | None = None
        if settings.local_host:
            if self._etcd is not None:
                self.lease = await self._hold_lease(self._etcd)
            agent = HostAgent(
                settings.data / "run", QemuDriver(verdict.accel), on_local_exit, gate=self.lease
            )
            self.host = LocalHost(agent)
            capacity = _local_capacity()
            await self.hosts.register_local(capacity.cpu, capacity.mem)
        self.fleet = Fleet(self.store, self.host, settings.url, on_exit)
        self.servers = ServerService(
            self.store,
            self.pool,
            self.fleet,
            check_callback=self._check_callback,
            on_event=self._event_committed,
        )
        if agent is not None:
            await agent.adopt_all()
            await self.servers.reconcile()
        if settings.manager:
            await self._serve_manager(settings.manager)
        elif self._etcd is not None:
            self.failover = Failover(
                self._etcd,
                self.store,
                self.servers,
                self.fleet,
                me=settings.url,
                ttl=settings.lease_ttl,
                margin=settings.failover_margin,
            )
            self.fleet.alive = self.failover.alive
            self.servers.on_fenced = self.failover.fenced
            await asyncio.wait_for(self.failover.start(), LEASE_JOIN_TIMEOUT)

    async def _serve_manager(self, manager: str) -> None:
        """A host agent: accept the manager's admin credentials as this
        host's own, and register with the manager (in the background until
        it answers: a manager outage must not stop a host)."""
        creds = urlsplit(manager)
        if not creds.username or not creds.password:
            raise ValueError("setting manager: the URL needs the admin credentials (http://U:K@…)")
        await self.users.ensure_admin(unquote(creds.username), unquote(creds.password))
        self._registration = asyncio.create_task(self._register(manager), name="register")

    async def _register(self, manager: str) -> None:
        parts = urlsplit(manager)
        me = urlsplit(self.settings.url)
        url = urlunsplit(me._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@{me.netloc}"))
        capacity = _local_capacity()
        keys = {
            "url": url,
            "cpu": str(capacity.cpu),
            "mem": str(capacity.mem),
            "name": self.settings.host_id,
            "id": self.settings.host_id,
        }
        body = "".join(f"{k} {v}\n" for k, v in keys.items())
        base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        async with httpx.AsyncClient(base_url=base, auth=auth, timeout=10) as client:
            while True:
                try:
                    reply = await client.post("/hosts/create", content=body)
                except httpx.TransportError as err:
                    log.warning("cannot reach manager %s: %s; trying again", base, err)
                else:
                    if reply.status_code in (200, 409):  # 409: registered before
                        log.info("registered with manager %s", base)
                        return
                    log.warning(
                        "manager %s refused registration: %s %s",
                        base,
                        reply.status_code,
                        reply.headers.get("x-elastic-error", ""),
                    )
                await asyncio.sleep(2.0)

    async def _hold_lease(self, etcd: Etcd) -> HostLease:
        """Join etcd (or take back the lease a previous run left valid) and
        make sure the watchdog runs, before any guest is adopted or started:
        a host that cannot hold a lease runs no guests."""
        settings = self.settings
        lease = HostLease(
            etcd,
            settings.host_id,
            settings.data,
            guest_killer(settings.data / "run"),
            advertise=settings.url,
            ttl=settings.lease_ttl,
        )
        await asyncio.wait_for(lease.start(), LEASE_JOIN_TIMEOUT)
        _start_watchdog(settings.data)
        log.info("host %s holds etcd lease %x", settings.host_id, lease.lease or 0)
        return lease

    async def _check_callback(self, user: User, url: str) -> None:
        """Users' callbacks go to public addresses unless the operator
        allows others; an administrator's (a host reporting to its manager)
        may go anywhere."""
        await check_callback_url(url, allow_private=self.settings.callback_private or user.admin)

    async def _check_delivery(self, event: Event, url: str) -> None:
        if self.settings.callback_private:  # anywhere goes: no need to know the user
            return
        await self._check_callback(await self.users.get(event.user), url)

    async def _event_committed(self) -> None:
        self.deliverer.wake()
        await self.feed.notify()

    async def close(self) -> None:
        """Let go of the guests (they keep running), stop the background
        work, then the store, whatever the earlier steps do."""
        try:
            await self.ledger.stop()
            await self.deliverer.stop()
            if self._registration is not None:
                self._registration.cancel()
                await asyncio.gather(self._registration, return_exceptions=True)
            if self.failover is not None:
                await self.failover.close()
            if self.fleet is not None:
                await self.fleet.close()
            elif self.host is not None:
                await self.host.close()
            # Kept, not revoked: a restart within the TTL takes it back and the
            # guests run on; otherwise the watchdog fences them.
            if self.lease is not None:
                await self.lease.close()
            if self._etcd is not None:
                await self._etcd.close()
        finally:
            try:
                await self.imager.close()
            finally:
                await self.store.close()


def _start_watchdog(data: Path) -> None:
    """Start the fencing watchdog for ``data``, detached: it must outlive
    this process (fencing a host whose agent died is its whole point). A
    second one finds the first's lock and exits."""
    with open(data / "watchdog.log", "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "overcast.host.watchdog", "--data", str(data)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )


def _local_capacity() -> Capacity:
    """This machine: all its memory but 512 MiB for itself; 2 GHz a core."""
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return Capacity(cpu=(os.cpu_count() or 1) * MHZ_PER_CORE, mem=max(mem_kib // 1024 - 512, 0))
