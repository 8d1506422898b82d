"""The host registry as admins see it: register, list, drain, remove.

Registering a host records where its agent answers and what it offers;
reaching it (a ``RemoteHost`` behind the ``HostClient`` seam) and placing
guests on it (:mod:`overcast.cluster.placement`) build on these rows. The
cloud registers its own machine as ``local`` when it opens, with the
capacity it measured, so the registry is never empty.
"""

from __future__ import annotations

import uuid as _uuid

from sqlalchemy.exc import IntegrityError

from overcast.model.codec import Keys, Record
from overcast.model.errors import BusyError, MissingError
from overcast.model.host import LOCAL, Host, host_info, parse_host_changes, parse_host_spec
from overcast.store import Store
from overcast.store import hosts as rows
from overcast.store import servers as server_rows

__all__ = ["HostService"]


class HostService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def register_local(self, cpu: int, mem: int) -> Host:
        """This machine, with the capacity measured now (it may have changed)."""
        async with self.store.write() as tx:
            known = await rows.get_host(tx, LOCAL, lock=True)
            if known is None:
                host = Host(LOCAL, "this machine", None, cpu, mem)
                await rows.insert_host(tx, host)
            else:
                host = Host(LOCAL, known.name, None, cpu, mem, known.draining)
                await rows.update_host(tx, host)
        return host

    async def create(self, keys: Keys) -> Host:
        spec = parse_host_spec(keys)
        host = Host(spec.id or str(_uuid.uuid4()), spec.name, spec.url, spec.cpu, spec.mem)
        try:
            async with self.store.write() as tx:
                await rows.insert_host(tx, host)
        except IntegrityError:
            raise BusyError(
                f"a host with id {host.id} or url {host_info(host, 0, 0, 0)['url']} "
                "is registered already"
            ) from None
        return host

    async def get(self, id: str) -> Host:
        async with self.store.read() as tx:
            host = await rows.get_host(tx, id.strip().lower())
        if host is None:
            raise MissingError(f"no host {id[:64]}")
        return host

    async def all(self) -> list[Host]:
        async with self.store.read() as tx:
            return await rows.list_hosts(tx)

    async def info(self, host: Host) -> Record:
        async with self.store.read() as tx:
            cpu, mem, guests = await server_rows.host_usage(tx, host.id)
        return host_info(host, cpu, mem, guests)

    async def set(self, id: str, keys: Keys) -> Host:
        host = await self.get(id)
        changed = parse_host_changes(keys, host)
        async with self.store.write() as tx:
            if await rows.get_host(tx, host.id, lock=True) is None:
                raise MissingError(f"no host {id[:64]}")
            await rows.update_host(tx, changed)
        return changed

    async def destroy(self, id: str) -> None:
        """Forget a host that holds no servers (drain it and move them first)."""
        host = await self.get(id)
        if host.id == LOCAL:
            raise BusyError("the manager's own machine cannot be removed; drain it instead")
        async with self.store.write() as tx:
            held = await server_rows.servers_on_host(tx, host.id)
            if held:
                raise BusyError(f"host {host.id} still holds {len(held)} server(s)")
            await rows.delete_host(tx, host.id)
