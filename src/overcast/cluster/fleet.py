"""The manager's hosts as guests see them: which client reaches each, and
which one a new guest goes to.

The registry (:mod:`overcast.cluster.hosts`) says which hosts exist; the
fleet turns a host id into its :class:`HostClient` (this process's
:class:`LocalHost`, or a :class:`RemoteHost` for a registered URL, made
once and kept) and asks :func:`overcast.cluster.placement.place` for a host
inside the create's transaction, over the hosts that are alive. Alive is
what the failover monitor says when etcd coordinates the hosts (a host
whose lease has ended gets no guest); without etcd every registered host is.

A remote host reports each guest's end to ``<manager>/hosts/exits?host=H``
(the manager's URL, with the credentials the host was registered with), so
a late report from a host that lost the guest is told apart from one by the
host that runs it now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from urllib.parse import quote, urlsplit, urlunsplit

from overcast.cluster.placement import Guest, HostLoad, place
from overcast.host.agent import GuestEnd
from overcast.host.client import HostClient
from overcast.host.remote import RemoteHost
from overcast.model.errors import FailedError, MissingError
from overcast.model.host import LOCAL, Host
from overcast.model.server import ServerSpec
from overcast.store import Store
from overcast.store import hosts as host_rows
from overcast.store import servers as rows
from overcast.store.engine import Tx

__all__ = ["Fleet", "HostExitSink", "exits_url"]

#: Told of a guest's end on a host (id), as a client saw it first-hand.
HostExitSink = Callable[[str, GuestEnd], Awaitable[None]]


def exits_url(manager: str, host_url: str, host_id: str) -> str:
    """Where host ``host_id`` reports ends: the manager's ``/hosts/exits``
    with the credentials of ``host_url`` (the host accepts the manager's
    admin credentials as its own, and calls back with them)."""
    creds = urlsplit(host_url).netloc.rpartition("@")[0]
    parts = urlsplit(manager)
    netloc = f"{creds}@{parts.netloc}" if creds else parts.netloc
    path = parts.path.rstrip("/") + "/hosts/exits"
    return urlunsplit((parts.scheme, netloc, path, f"host={quote(host_id)}", ""))


class Fleet:
    """``local``: this process's host (None for a manager that runs no
    guests); ``manager``: this process's URL as hosts reach it;
    ``on_exit``: where a remote client's first-hand ends go."""

    def __init__(
        self, store: Store, local: HostClient | None, manager: str, on_exit: HostExitSink
    ) -> None:
        self.store = store
        self.local = local
        self.manager = manager
        self.on_exit = on_exit
        #: Which registered hosts may take guests now (all, without etcd).
        self.alive: Callable[[Host], bool] = lambda _host: True
        #: Guests on their way to a host whose rows do not say so yet (a
        #: revival starts the guest before it moves the row): host → (cpu,
        #: mem, guests), counted by placement so that concurrent revivals
        #: spread instead of all choosing the emptiest host.
        self.incoming: dict[str, tuple[int, int, int]] = {}
        self._remotes: dict[str, tuple[str, RemoteHost]] = {}

    async def client(self, host_id: str) -> HostClient:
        """The client of host ``host_id``; :class:`FailedError` if it cannot
        be reached from here at all."""
        if host_id == LOCAL:
            if self.local is None:
                raise FailedError("this manager runs no guests of its own")
            return self.local
        known = self._remotes.get(host_id)
        if known is not None:
            return known[1]
        async with self.store.read() as tx:
            host = await host_rows.get_host(tx, host_id)
        if host is None or host.url is None:
            raise FailedError(f"host {host_id} is not registered")
        return self._remote(host)

    def _remote(self, host: Host) -> RemoteHost:
        assert host.url is not None
        known = self._remotes.get(host.id)
        if known is not None and known[0] == host.url:
            return known[1]
        host_id, sink = host.id, self.on_exit

        async def on_exit(end: GuestEnd) -> None:
            await sink(host_id, end)

        client = RemoteHost(host.url, on_exit, exits_url=exits_url(self.manager, host.url, host.id))
        self._remotes[host.id] = (host.url, client)
        return client

    def usable(self, host: Host) -> bool:
        """Whether guests may be started on ``host`` from here now."""
        if host.url is None:
            return host.id == LOCAL and self.local is not None
        return self.alive(host)

    async def place(self, tx: Tx, spec: ServerSpec, exclude: Collection[str] = ()) -> str:
        """The host for a guest of ``spec`` (its pin, or the best of the
        usable hosts not in ``exclude``), read in ``tx`` so the room found
        is still there when the caller's row is written."""
        hosts = [
            h for h in await host_rows.list_hosts(tx) if h.id not in exclude and self.usable(h)
        ]
        if spec.host is not None and spec.host not in {h.id for h in hosts}:
            if await host_rows.get_host(tx, spec.host) is None:
                raise MissingError(f"no host {spec.host}")
            raise FailedError(f"host {spec.host} cannot take guests now")
        loads = await rows.host_loads(tx)
        by_servers = await rows.hosts_running(tx, spec.avoid_servers, ())
        by_drives = await rows.hosts_running(tx, (), spec.avoid_drives)
        snapshot = []
        for host in hosts:
            cpu, mem, count = loads.get(host.id, (0, 0, 0))
            more = self.incoming.get(host.id, (0, 0, 0))
            cpu, mem, count = cpu + more[0], mem + more[1], count + more[2]
            snapshot.append(
                HostLoad(
                    host.id,
                    host.cpu,
                    host.mem,
                    cpu,
                    mem,
                    count,
                    servers=frozenset(spec.avoid_servers) if host.id in by_servers else frozenset(),
                    drives=frozenset(spec.avoid_drives) if host.id in by_drives else frozenset(),
                    draining=host.draining,
                )
            )
        guest = Guest(
            spec.cpu,
            spec.mem,
            frozenset(spec.avoid_servers),
            frozenset(spec.avoid_drives),
            pin=spec.host,
        )
        return place(guest, snapshot).id

    def expect(self, host_id: str, spec: ServerSpec, sign: int = 1) -> None:
        """Count (``sign`` 1) or stop counting (-1) a guest of ``spec``
        headed for ``host_id`` in :attr:`incoming`."""
        cpu, mem, count = self.incoming.get(host_id, (0, 0, 0))
        now = (cpu + sign * spec.cpu, mem + sign * spec.mem, count + sign)
        if now[2] <= 0:
            self.incoming.pop(host_id, None)
        else:
            self.incoming[host_id] = now

    async def close(self) -> None:
        """Let go of every host; guests keep running."""
        remotes, self._remotes = list(self._remotes.values()), {}
        for _url, client in remotes:
            await client.close()
        if self.local is not None:
            await self.local.close()
