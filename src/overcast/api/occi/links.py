"""Storagelinks and networkinterfaces: a server's device slots and NICs.

Creating one attaches the drive or NIC to its compute (hot-plugged while
the guest runs; IDE slots only on an inactive compute), deleting one
detaches it. A link is its slot: it cannot be re-pointed or renamed, so an
update that changes anything is refused (delete it and create another);
one that changes nothing (a client sending back what it read) is fine.
"""

from __future__ import annotations

import abc

from overcast.api.occi.categories import NETWORKINTERFACE, STORAGELINK, AttributeValue, Mixin
from overcast.api.occi.compute import owner_ips
from overcast.api.occi.context import Ctx, Handler, uuid_or_missing
from overcast.api.occi.keys import (
    device_of,
    free_device,
    free_nic,
    interface_of,
    nic_index,
    nic_request,
)
from overcast.api.occi.mapping import PUBLIC, device_link, nic_link, split_link_id
from overcast.api.occi.render import EntityRendering
from overcast.model.drive import Media
from overcast.model.errors import MissingError, UsageError
from overcast.model.server import Server, ServerStatus

__all__ = ["NetworkInterfaceHandler", "StorageLinkHandler"]


class _LinkHandler(Handler):
    links = True

    @abc.abstractmethod
    def _slots(self, server: Server) -> list[str]:
        """The server's slots this kind of link stands for."""

    @abc.abstractmethod
    async def _render(self, ctx: Ctx, server: Server, slot: str) -> EntityRendering: ...

    async def _find(self, ctx: Ctx, ident: str) -> tuple[Server, str]:
        server_id, slot = split_link_id(ident)
        server = await ctx.cloud.servers.owned(
            ctx.user, uuid_or_missing(server_id, self.collection)
        )
        if slot not in self._slots(server):
            raise MissingError(f"no {self.collection} {ident[:120]}")
        return server, slot

    async def _source(self, ctx: Ctx, entity: EntityRendering) -> Server:
        if entity.links:
            raise UsageError(f"a {self.collection} has no links of its own")
        collection, ident = ctx.site.entity(entity.source or "", "occi.core.source")
        if collection != "compute":
            raise UsageError(f"occi.core.source: a {self.collection} comes from a compute")
        return await ctx.cloud.servers.owned(ctx.user, uuid_or_missing(ident, "compute"))

    def _target(self, ctx: Ctx, entity: EntityRendering, collection: str) -> str:
        found, ident = ctx.site.entity(entity.target or "", "occi.core.target")
        if found != collection:
            raise UsageError(f"occi.core.target: a {self.collection} goes to a {collection}")
        return ident

    async def all(self, ctx: Ctx) -> list[EntityRendering]:
        out = []
        for server in await ctx.cloud.servers.of_user(ctx.user):
            for slot in self._slots(server):
                out.append(await self._render(ctx, server, slot))
        return out

    async def one(self, ctx: Ctx, ident: str) -> EntityRendering:
        return await self._render(ctx, *await self._find(ctx, ident))

    async def update(
        self,
        ctx: Ctx,
        ident: str,
        entity: EntityRendering,
        mixins: list[Mixin],
        *,
        replace: bool,
    ) -> EntityRendering:
        current = await self.one(ctx, ident)
        changed = sorted(
            name
            for name, value in entity.attributes.items()
            if not _same(current.attributes.get(name), value)
        )
        changed += sorted(set(entity.mixins) ^ set(current.mixins) if replace else set())
        if changed:
            raise UsageError(
                f"a {self.collection} cannot change ({', '.join(changed)}); "
                "delete it and create another"
            )
        return current


def _same(a: AttributeValue | None, b: AttributeValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


class StorageLinkHandler(_LinkHandler):
    kind = STORAGELINK
    collection = "storagelink"

    def _slots(self, server: Server) -> list[str]:
        return [d.name for d in server.spec.devices]

    async def _render(self, ctx: Ctx, server: Server, slot: str) -> EntityRendering:
        return device_link(server, slot, ctx.site)

    async def create(
        self, ctx: Ctx, entity: EntityRendering, mixins: list[Mixin]
    ) -> EntityRendering:
        server = await self._source(ctx, entity)
        drive_id = self._target(ctx, entity, "storage")
        running = server.status in (ServerStatus.ACTIVE, ServerStatus.PAUSED)
        device = device_of(entity.attributes) or free_device(self._slots(server), running=running)
        drive = await ctx.cloud.drives.readable(ctx.user, uuid_or_missing(drive_id, "storage"))
        media = "cdrom" if drive.media is Media.CDROM else "disk"
        server = await ctx.cloud.servers.attach_drive(
            ctx.user, server.uuid, device, drive.uuid, media=media
        )
        return device_link(server, device, ctx.site)

    async def delete(self, ctx: Ctx, ident: str) -> None:
        server, device = await self._find(ctx, ident)
        await ctx.cloud.servers.detach_drive(ctx.user, server.uuid, device)


class NetworkInterfaceHandler(_LinkHandler):
    kind = NETWORKINTERFACE
    collection = "networkinterface"

    def _slots(self, server: Server) -> list[str]:
        return [f"nic:{n.index}" for n in server.nics]

    async def all(self, ctx: Ctx) -> list[EntityRendering]:
        servers = await ctx.cloud.servers.of_user(ctx.user)
        ips = await owner_ips(ctx) if any(s.nics for s in servers) else {}
        return [nic_link(s, n.index, ctx.site, ips) for s in servers for n in s.nics]

    async def _render(self, ctx: Ctx, server: Server, slot: str) -> EntityRendering:
        index = nic_index(slot)
        assert index is not None
        return nic_link(server, index, ctx.site, await owner_ips(ctx))

    async def create(
        self, ctx: Ctx, entity: EntityRendering, mixins: list[Mixin]
    ) -> EntityRendering:
        server = await self._source(ctx, entity)
        network = self._target(ctx, entity, "network")
        if network != PUBLIC:
            network = uuid_or_missing(network, "network")
        request = nic_request(network, entity.mixins, entity.attributes)
        index = interface_of(entity.attributes)
        if index is None:
            index = free_nic(n.index for n in server.nics)
        server = await ctx.cloud.servers.attach_nic(
            ctx.user,
            server.uuid,
            index,
            model="virtio",
            vlan=request.vlan,
            dhcp=request.dhcp,
            mac=request.mac,
        )
        return await self._render(ctx, server, f"nic:{index}")

    async def delete(self, ctx: Ctx, ident: str) -> None:
        server, slot = await self._find(ctx, ident)
        index = nic_index(slot)
        assert index is not None
        await ctx.cloud.servers.detach_nic(ctx.user, server.uuid, index)
