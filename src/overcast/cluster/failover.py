"""Hosts die; guests don't: the manager's side of DESIGN.md "Hosts, leases,
failover".

Every manager watches the host keys in etcd (``overcast/hosts/<id>``, value
the host's URL, on the host's lease), so that it places new guests only on
hosts that hold a lease. One manager at a time is *active*: it holds the
key ``overcast/manager`` on a lease of its own, taken only if absent, and
the others keep trying to take it (a standby takes over within a TTL of
the active one's death; until then every manager still serves the API).

The active manager revives:

* the running servers of every registered host whose lease has been gone
  for ``margin`` seconds (the host fenced its guests before its lease could
  end: see :mod:`overcast.host.lease`; the margin covers clock drift); and
* a server its host reported ``fenced`` (the host lost its lease, killed
  the guest and joined again with a new one).

A revival first takes the guest's key ``overcast/guests/<server>`` for the
new host, on that host's lease, in a transaction that succeeds only if the
key is absent: two managers can never revive one guest twice, and a guest
key that some host holds on a live lease means the guest runs there. A key
found on another live host is a revival cut short (a manager died during
it): it is finished there. Then :meth:`ServerService.revive` starts the
guest on that host with the same drives, NICs and MACs and moves the
record, with a ``server.revive`` event. A failed start gives the key back
and the next pass tries again; a server no host can take is retried every
pass and listed in :attr:`Failover.stranded` for admins, never dropped.

A manager outage fences nothing: hosts keep their leases while etcd is up,
and a restarted manager revives only servers whose host's lease is gone.
The all-in-one cloud's own ``local`` host is not failed over (a manager
that coordinates hosts runs no guests of its own: ``local_host = false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass

from overcast.cluster.fleet import Fleet
from overcast.cluster.servers import ServerService
from overcast.host.lease import HOSTS, guest_key
from overcast.model.errors import HostSilent, OvercastError
from overcast.model.host import Host, without_credentials
from overcast.model.server import ServerStatus
from overcast.store import Store
from overcast.store import hosts as host_rows
from overcast.store import servers as rows
from overcast.store.etcd import Etcd, EtcdError, KeyValue

__all__ = ["MANAGER", "Failover", "LiveHost", "Stranded"]

log = logging.getLogger(__name__)

#: The active manager's key.
MANAGER = "overcast/manager"
#: How many revivals run at once.
PARALLEL = 16
#: The longest pause between passes with nothing pending (s): host lease
#: changes wake a pass at once, this only bounds what a missed wake costs.
IDLE = 5.0


@dataclass(frozen=True)
class LiveHost:
    """A host that holds a lease now: its etcd id, its URL and the lease."""

    id: str
    url: str
    lease: int


@dataclass(frozen=True)
class Stranded:
    """A server waiting to be revived, and why it has not been yet."""

    server: str
    host: str
    since: float
    reason: str


class Failover:
    """The failover of the hosts registered in ``fleet``'s store, for the
    manager ``me`` (its id in the election). ``ttl`` is the manager's own
    lease; ``margin`` the wait after a host's lease ended; ``every`` the
    period of a pass while anything is pending."""

    def __init__(
        self,
        etcd: Etcd,
        store: Store,
        servers: ServerService,
        fleet: Fleet,
        *,
        me: str,
        ttl: int = 5,
        margin: float = 1.0,
        every: float = 1.0,
    ) -> None:
        self.etcd = etcd
        self.store = store
        self.servers = servers
        self.fleet = fleet
        self.me = me
        self.ttl = ttl
        self.margin = margin
        self.every = every
        #: Hosts that hold a lease, by etcd id (every manager keeps this).
        self.live: dict[str, LiveHost] = {}
        #: Whether this manager is the active one.
        self.active = False
        #: Servers that could not be revived yet (server → why).
        self.stranded: dict[str, Stranded] = {}
        self._urls: dict[str, str] = {}  # URL → etcd id
        self._lost: dict[str, float] = {}  # URL → when its lease was seen to end
        self._gone: dict[str, float] = {}  # registered host id → since when it has none
        self._fenced: dict[str, tuple[str, float]] = {}  # server → (host, when)
        self._synced = asyncio.Event()
        self._wake = asyncio.Event()
        self._placing = asyncio.Lock()
        self._started = time.time()
        self._tasks: list[asyncio.Task[None]] = []

    # -- what others ask ---------------------------------------------------------

    def alive(self, host: Host) -> bool:
        """Whether ``host`` holds a lease now (placement's filter)."""
        return host.url is not None and without_credentials(host.url) in self._urls

    async def fenced(self, server: str, host: str, at: float) -> None:
        """Host ``host`` reported that it fenced ``server`` at ``at``."""
        self._fenced[server] = (host, at)
        self._wake.set()

    async def start(self) -> None:
        """Watch the hosts and campaign; return once the hosts are known."""
        self._tasks = [
            asyncio.create_task(self._watch_hosts(), name="failover-watch"),
            asyncio.create_task(self._campaign(), name="failover-campaign"),
        ]
        await self._synced.wait()

    async def close(self) -> None:
        """Stop; the manager's lease is revoked, so a standby takes over at once."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- the hosts' leases -------------------------------------------------------

    async def _watch_hosts(self) -> None:
        while True:
            try:
                kvs, revision = await self.etcd.get_prefix(HOSTS)
                self._replace({h.id: h for h in map(_live, kvs)})
                self._synced.set()
                async for event in self.etcd.watch_prefix(HOSTS, revision + 1):
                    live = dict(self.live)
                    host_id = event.kv.key.removeprefix(HOSTS)
                    if event.type == "delete":
                        live.pop(host_id, None)
                        self._replace(live)
                    else:
                        live[host_id] = _live(event.kv)
                        self._replace(live)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # etcd unreachable: keep what is known, try again
                log.warning("watching host leases: %s", err)
                await asyncio.sleep(self.every / 2)

    def _replace(self, live: dict[str, LiveHost]) -> None:
        now = time.time()
        for old in self.live.values():
            new = live.get(old.id)
            if new is None or new.lease != old.lease:
                log.warning("host %s (%s) lost lease %x", old.id, old.url, old.lease)
                self._lost[old.url] = now
        self.live = live
        self._urls = {h.url: h.id for h in live.values()}
        self._wake.set()

    # -- the election --------------------------------------------------------------

    async def _campaign(self) -> None:
        await self._synced.wait()
        while True:
            lease = 0
            try:
                lease = await self.etcd.grant(self.ttl)
                if await self.etcd.put_if_absent(MANAGER, self.me, lease=lease):
                    await self._lead(lease)
                else:
                    await self._revoke(lease)
                    await asyncio.sleep(self.every / 2)
            except asyncio.CancelledError:
                if lease:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._revoke(lease))
                raise
            except Exception as err:
                log.warning("manager election: %s", err)
                await asyncio.sleep(self.every / 2)

    async def _lead(self, lease: int) -> None:
        """Be the active manager while ``lease`` lives."""
        log.warning("manager %s is active", self.me)
        self.active = True
        passes = asyncio.create_task(self._passes(), name="failover-passes")
        renewed = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.ttl / 3)
                try:
                    await self.etcd.keepalive(lease)
                    renewed = time.monotonic()
                except EtcdError as err:
                    if time.monotonic() - renewed > self.ttl - self.margin:
                        raise EtcdError(f"lost the manager lease: {err}") from err
                if passes.done():
                    passes.result()
        finally:
            self.active = False
            passes.cancel()
            await asyncio.gather(passes, return_exceptions=True)
            log.warning("manager %s is no longer active", self.me)

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.etcd.revoke(lease)

    # -- revivals ------------------------------------------------------------------

    async def _passes(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("failover pass failed")
                wait = self.every
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def sweep(self) -> float:
        """One pass: revive what is due; how long until the next is due."""
        now = time.time()
        wait = IDLE
        async with self.store.read() as tx:
            hosts = [h for h in await host_rows.list_hosts(tx) if h.url is not None]
            due: list[tuple[str, str, float]] = []
            for host in hosts:
                if self.alive(host):
                    self._gone.pop(host.id, None)
                    continue
                url = without_credentials(host.url or "")
                gone = self._gone.get(host.id) or self._lost.get(url) or self._started
                self._gone[host.id] = gone
                held = [
                    s
                    for s in await rows.servers_on_host(tx, host.id)
                    if s.status in (ServerStatus.ACTIVE, ServerStatus.PAUSED)
                ]
                if not held:
                    continue
                if now - gone < self.margin:
                    wait = min(wait, gone + self.margin - now)
                    continue
                due += [(s.uuid, host.id, gone) for s in held]
        for server, (from_host, at) in list(self._fenced.items()):
            del self._fenced[server]
            due.append((server, from_host, at))
        if not due:
            self.stranded.clear()
            return wait
        limit = asyncio.Semaphore(PARALLEL)

        async def one(server: str, host: str, at: float) -> bool:
            async with limit:
                return await self._revive(server, host, at)

        unique = {server: (server, host, at) for server, host, at in due}
        results = await asyncio.gather(*(one(*d) for d in unique.values()))
        return wait if all(results) else min(wait, self.every)

    async def _revive(self, server: str, lost: str, lost_at: float) -> bool:
        """Revive ``server`` off host ``lost``; True when done (or nothing
        to do), False to try again next pass."""
        key = guest_key(server)
        try:
            kv = await self.etcd.get(key)
            target: LiveHost | None = None
            if kv is not None:
                holder = self.live.get(kv.value)
                if holder is not None and holder.lease == kv.lease:
                    target = holder  # it runs, or a revival was cut short, there
            to = await self._registered(target) if target is not None else None
            if to == lost:
                return True  # its host holds it on a live lease: nothing was lost
            # One placement at a time, each counted before the next: revivals
            # of one lost host spread over the others.
            async with self._placing, self.store.read() as tx:
                record = await rows.get_server(tx, server)
                if record is None or record.host != lost:
                    self.stranded.pop(server, None)
                    return True
                # A pin to the lost host yields: running elsewhere beats not at all.
                spec = dataclasses.replace(record.spec, host=None)
                if target is None or to is None:
                    to = await self.fleet.place(tx, spec, exclude={lost})
                    fresh = True
                else:
                    fresh = False
                self.fleet.expect(to, spec)
            try:
                if fresh:
                    target = await self._live_of(to)
                    if target is None:
                        raise OvercastError(f"host {to} holds no lease")
                    if not await self.etcd.put_if_absent(key, target.id, lease=target.lease):
                        return False  # someone else took it: look again next pass
                assert target is not None
                try:
                    await self.servers.revive(server, lost, to, lost_at)
                except HostSilent:
                    # The guest may run there: the key stays, and the next
                    # pass finishes the revival on that same host.
                    raise
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self.etcd.delete_if(key, target.id)
                    raise
            finally:
                self.fleet.expect(to, spec, -1)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            reason = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            first = self.stranded.get(server)
            self.stranded[server] = Stranded(
                server, lost, first.since if first else time.time(), str(reason)
            )
            log.warning("cannot revive server %s off host %s yet: %s", server, lost, reason)
            return False
        self.stranded.pop(server, None)
        return True

    async def _registered(self, live: LiveHost) -> str | None:
        """The registered host id of a live host (matched by URL)."""
        async with self.store.read() as tx:
            for host in await host_rows.list_hosts(tx):
                if host.url is not None and without_credentials(host.url) == live.url:
                    return host.id
        return None

    async def _live_of(self, host_id: str) -> LiveHost | None:
        async with self.store.read() as tx:
            host = await host_rows.get_host(tx, host_id)
        if host is None or host.url is None:
            return None
        etcd_id = self._urls.get(without_credentials(host.url))
        return self.live.get(etcd_id) if etcd_id is not None else None


def _live(kv: KeyValue) -> LiveHost:
    return LiveHost(kv.key.removeprefix(HOSTS), kv.value.rstrip("/"), kv.lease)
