"""Storage (drives) and network (VLANs and the shared public network)
resources.

A storage is any drive the caller may read (its own, the library's, or
shared with it) but the collection lists only its own. Storage actions:
``resize`` changes the size (``size`` in GiB); ``online`` is refused as
already done; ``offline``, ``backup`` and ``snapshot`` are not implemented
(501). Networks are always up: ``up`` is refused as already done, ``down``
is not implemented. The public network is everyone's: it cannot be
changed or deleted.
"""

from __future__ import annotations

from collections.abc import Mapping

from overcast.api.occi.categories import (
    IPNETWORK,
    NETWORK,
    STORAGE,
    Action,
    AttributeValue,
    Mixin,
)
from overcast.api.occi.context import Ctx, Handler, uuid_or_missing
from overcast.api.occi.http import Forbidden, NotSupported
from overcast.api.occi.keys import network_changes, storage_changes, storage_size, storage_spec
from overcast.api.occi.mapping import PUBLIC, network_entity, public_entity, storage_entity
from overcast.api.occi.render import EntityRendering
from overcast.model.drive import DriveChanges
from overcast.model.errors import BusyError, UsageError

__all__ = ["NetworkHandler", "StorageHandler"]


def _no_links(entity: EntityRendering) -> None:
    if entity.links:
        raise UsageError(
            f"a {entity.kind.rpartition('#')[2]} has no links of its own; link it from a compute"
        )


class StorageHandler(Handler):
    kind = STORAGE
    collection = "storage"

    async def all(self, ctx: Ctx) -> list[EntityRendering]:
        return [storage_entity(d, ctx.site) for d in await ctx.cloud.drives.of_user(ctx.user)]

    async def one(self, ctx: Ctx, ident: str) -> EntityRendering:
        drive = await ctx.cloud.drives.readable(ctx.user, uuid_or_missing(ident, "storage"))
        return storage_entity(drive, ctx.site)

    async def create(
        self, ctx: Ctx, entity: EntityRendering, mixins: list[Mixin]
    ) -> EntityRendering:
        _no_links(entity)
        drive = await ctx.cloud.drives.create(ctx.user, storage_spec(entity.attributes))
        return storage_entity(drive, ctx.site)

    async def update(
        self,
        ctx: Ctx,
        ident: str,
        entity: EntityRendering,
        mixins: list[Mixin],
        *,
        replace: bool,
    ) -> EntityRendering:
        changes = storage_changes(entity.attributes)
        drive = await ctx.cloud.drives.owned(ctx.user, uuid_or_missing(ident, "storage"))
        return storage_entity(await ctx.cloud.drives.set(ctx.user, drive.uuid, changes), ctx.site)

    async def delete(self, ctx: Ctx, ident: str) -> None:
        await ctx.cloud.drives.destroy(ctx.user, uuid_or_missing(ident, "storage"))

    async def act(
        self, ctx: Ctx, ident: str, action: Action, params: Mapping[str, AttributeValue]
    ) -> EntityRendering:
        drive = await ctx.cloud.drives.owned(ctx.user, uuid_or_missing(ident, "storage"))
        if action.term == "resize":
            size = params["size"]
            assert isinstance(size, int | float)  # check_action ran
            changes = DriveChanges(size=storage_size(float(size), "size"))
            return storage_entity(
                await ctx.cloud.drives.set(ctx.user, drive.uuid, changes), ctx.site
            )
        if action.term == "online":
            raise BusyError(f"storage {drive.uuid} is online already")
        raise NotSupported(f"storage action {action.term}: not implemented by overcast")


class NetworkHandler(Handler):
    kind = NETWORK
    collection = "network"

    async def _public(self, ctx: Ctx) -> EntityRendering:
        return public_entity(await ctx.cloud.resources.pools(), ctx.site)

    async def all(self, ctx: Ctx) -> list[EntityRendering]:
        vlans = await ctx.cloud.resources.vlans(ctx.user)
        return [await self._public(ctx), *(network_entity(v, ctx.site) for v in vlans)]

    async def one(self, ctx: Ctx, ident: str) -> EntityRendering:
        if ident == PUBLIC:
            return await self._public(ctx)
        vlan = await ctx.cloud.resources.vlan(ctx.user, uuid_or_missing(ident, "network"))
        return network_entity(vlan, ctx.site)

    async def create(
        self, ctx: Ctx, entity: EntityRendering, mixins: list[Mixin]
    ) -> EntityRendering:
        _no_links(entity)
        if IPNETWORK in mixins:
            raise UsageError(
                "ipnetwork: a private network carries no IP configuration; "
                "addresses are for the public network"
            )
        changes = network_changes(entity.attributes, creating=True)
        return network_entity(await ctx.cloud.resources.create_vlan(ctx.user, changes), ctx.site)

    async def update(
        self,
        ctx: Ctx,
        ident: str,
        entity: EntityRendering,
        mixins: list[Mixin],
        *,
        replace: bool,
    ) -> EntityRendering:
        if ident == PUBLIC:
            current = await self._public(ctx)
            changed = [k for k, v in entity.attributes.items() if current.attributes.get(k) != v]
            if changed or set(entity.mixins) - set(current.mixins):
                raise Forbidden("the public network is shared by every user; it cannot change")
            return current
        changes = network_changes(entity.attributes, creating=False)
        vlan = await ctx.cloud.resources.vlan(ctx.user, uuid_or_missing(ident, "network"))
        return network_entity(
            await ctx.cloud.resources.set_vlan(ctx.user, vlan.uuid, changes), ctx.site
        )

    async def delete(self, ctx: Ctx, ident: str) -> None:
        if ident == PUBLIC:
            raise Forbidden("the public network is shared by every user; it cannot be deleted")
        await ctx.cloud.resources.destroy_vlan(ctx.user, uuid_or_missing(ident, "network"))

    async def act(
        self, ctx: Ctx, ident: str, action: Action, params: Mapping[str, AttributeValue]
    ) -> EntityRendering:
        await self.one(ctx, ident)  # 404 first
        if action.term == "up":
            raise BusyError(f"network {ident} is up already")
        raise NotSupported(f"network action {action.term}: overcast's networks are always up")
