"""Compute resources: servers, their create path and their actions.

Creating a compute is ``/servers/create`` with the keys the mapping makes,
the inline links (GFD.226: a resource's ``links``) turned into device and
NIC keys, so the whole machine is checked and started in one synchronous
create: 201 means it runs. With an ``os_tpl`` the boot drive is first
copied from the library (:func:`overcast.cluster.compose.create_from_library`).

Actions, true to this project: ``stop`` is the ACPI power button
(``method=poweroff`` pulls the plug instead); ``restart`` a hard reset;
``suspend`` pauses the guest; ``start`` resumes a suspended compute or
starts an inactive one. An action the current state does not allow is
``409``; a ``method`` overcast cannot honour is ``501``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from overcast.api.occi.categories import (
    COMPUTE,
    LINK,
    NETWORKINTERFACE,
    STORAGELINK,
    Action,
    AttributeValue,
    Mixin,
)
from overcast.api.occi.context import STATIC, Ctx, Handler, check_entity, uuid_or_missing
from overcast.api.occi.http import NotSupported
from overcast.api.occi.keys import (
    compute_changes,
    compute_keys,
    device_of,
    free_device,
    free_nic,
    interface_of,
    nic_request,
)
from overcast.api.occi.mapping import compute_entity
from overcast.api.occi.render import EntityRendering
from overcast.cluster.compose import create_from_library
from overcast.model.codec import Keys
from overcast.model.drive import Media
from overcast.model.errors import BusyError, MissingError, UsageError
from overcast.model.resource import Ip
from overcast.model.server import Server, ServerStatus

__all__ = ["ComputeHandler", "owner_ips"]

#: Where an ``os_tpl`` copy goes: the first IDE disk, what every BIOS boots.
_OS_DEVICE = "ide:0:0"
#: The stand-in source of an inline link, for the checks: the compute the
#: link comes with does not exist yet.
_NEW = {"occi.core.source": "/compute/new"}


async def owner_ips(ctx: Ctx) -> dict[str, Ip]:
    return {ip.address: ip for ip in await ctx.cloud.resources.ips(ctx.user)}


class ComputeHandler(Handler):
    kind = COMPUTE
    collection = "compute"

    async def _server(self, ctx: Ctx, ident: str) -> Server:
        return await ctx.cloud.servers.owned(ctx.user, uuid_or_missing(ident, "compute"))

    async def _render(self, ctx: Ctx, server: Server) -> EntityRendering:
        return compute_entity(server, ctx.site, await owner_ips(ctx))

    async def all(self, ctx: Ctx) -> list[EntityRendering]:
        servers = await ctx.cloud.servers.of_user(ctx.user)
        ips = await owner_ips(ctx) if any(s.nics for s in servers) else {}
        return [compute_entity(s, ctx.site, ips) for s in servers]

    async def one(self, ctx: Ctx, ident: str) -> EntityRendering:
        return await self._render(ctx, await self._server(ctx, ident))

    async def create(
        self, ctx: Ctx, entity: EntityRendering, mixins: list[Mixin]
    ) -> EntityRendering:
        keys, library, stopped = compute_keys(entity.attributes, mixins)
        keys.update(await self._link_keys(ctx, entity.links, os=library is not None))
        cloud = ctx.cloud
        if library is None:
            server = await cloud.servers.create(ctx.user, keys, stopped=stopped)
        else:
            server = await create_from_library(
                cloud.drives,
                cloud.servers,
                ctx.user,
                keys,
                library,
                device=_OS_DEVICE,
                stopped=stopped,
            )
        return await self._render(ctx, server)

    async def _link_keys(self, ctx: Ctx, links: tuple[EntityRendering, ...], *, os: bool) -> Keys:
        """Device and NIC keys for a new compute's inline links."""
        keys: Keys = {}
        devices: set[str] = {_OS_DEVICE} if os else set()
        nics: set[int] = set()
        for link in links:
            kind = link.kind
            if kind == LINK.id:  # a Link without category: the target says which
                collection, _ = ctx.site.entity(link.target or "", "a link's target")
                kind = {"storage": STORAGELINK.id, "network": NETWORKINTERFACE.id}.get(
                    collection, kind
                )
                link = dataclasses.replace(link, kind=kind)
            if kind == STORAGELINK.id:
                check_entity(STATIC, STORAGELINK, link, extra=_NEW)
                collection, drive_id = ctx.site.entity(link.target or "", "occi.core.target")
                if collection != "storage":
                    raise UsageError(f"a storagelink targets a storage, not {link.target}")
                device = device_of(link.attributes) or free_device(devices, running=False)
                if device in devices:
                    raise UsageError(f"occi.storagelink.deviceid: {device} is taken twice")
                devices.add(device)
                drive = await ctx.cloud.drives.readable(ctx.user, drive_id)
                keys[device] = drive.uuid
                if drive.media is Media.CDROM:
                    keys[f"{device}:media"] = "cdrom"
            elif kind == NETWORKINTERFACE.id:
                check_entity(STATIC, NETWORKINTERFACE, link, extra=_NEW)
                collection, network = ctx.site.entity(link.target or "", "occi.core.target")
                if collection != "network":
                    raise UsageError(f"a networkinterface targets a network, not {link.target}")
                request = nic_request(network, link.mixins, link.attributes)
                index = interface_of(link.attributes)
                index = free_nic(nics) if index is None else index
                if index in nics:
                    raise UsageError(f"occi.networkinterface.interface: nic:{index} is taken twice")
                nics.add(index)
                keys[f"nic:{index}:model"] = "virtio"
                if request.vlan is not None:
                    keys[f"nic:{index}:vlan"] = request.vlan
                if request.dhcp is not None:
                    keys[f"nic:{index}:dhcp"] = request.dhcp
                if request.mac is not None:
                    keys[f"nic:{index}:mac"] = request.mac
            else:
                raise UsageError(
                    f"a compute's links are storagelinks or networkinterfaces, not {kind}"
                )
        return keys

    async def update(
        self,
        ctx: Ctx,
        ident: str,
        entity: EntityRendering,
        mixins: list[Mixin],
        *,
        replace: bool,
    ) -> EntityRendering:
        """Links in the rendering are left as they are (GFD.223: a PUT
        leaves a resource's links intact); they change through
        ``/storagelink/`` and ``/networkinterface/``."""
        server = await self._server(ctx, ident)
        keys = compute_changes(server, entity.attributes, mixins, replace=replace)
        return await self._render(ctx, await ctx.cloud.servers.set(ctx.user, server.uuid, keys))

    async def delete(self, ctx: Ctx, ident: str) -> None:
        server = await self._server(ctx, ident)
        await ctx.cloud.servers.destroy(ctx.user, server.uuid)

    async def act(
        self, ctx: Ctx, ident: str, action: Action, params: Mapping[str, AttributeValue]
    ) -> EntityRendering:
        server = await self._server(ctx, ident)
        before = await self._render(ctx, server)
        await _ACTIONS[action.term](ctx, server, params.get("method"))
        try:
            return await self.one(ctx, server.uuid)
        except MissingError:
            # A non-persistent compute that stopped has ceased to exist: what
            # it was, last, is all there is to show.
            attributes = {
                **before.attributes,
                "occi.compute.state": "inactive",
                "occi.compute.state.message": "stopped; a non-persistent compute ceases to exist",
            }
            return dataclasses.replace(before, attributes=attributes, actions=(), links=())


def _state_error(server: Server, action: str, needs: str) -> BusyError:
    state = {
        ServerStatus.ACTIVE: "active",
        ServerStatus.PAUSED: "suspended",
        ServerStatus.STOPPED: "inactive",
        ServerStatus.STARTING: "starting",
    }[server.status]
    return BusyError(f"compute {server.uuid} is {state}; {action} needs it {needs}")


async def _start(ctx: Ctx, server: Server, method: AttributeValue | None) -> None:
    if server.status is ServerStatus.PAUSED:
        await ctx.cloud.servers.resume(ctx.user, server.uuid)
    elif server.status is ServerStatus.STOPPED:
        await ctx.cloud.servers.start(ctx.user, server.uuid)
    else:
        raise _state_error(server, "start", "inactive or suspended")


async def _stop(ctx: Ctx, server: Server, method: AttributeValue | None) -> None:
    if method == "poweroff" and server.status in (ServerStatus.ACTIVE, ServerStatus.PAUSED):
        await ctx.cloud.servers.stop(ctx.user, server.uuid)
    elif server.status is ServerStatus.ACTIVE:
        await ctx.cloud.servers.shutdown(ctx.user, server.uuid)  # acpioff, graceful
    else:
        raise _state_error(server, "stop", "active (or suspended, with method poweroff)")


async def _restart(ctx: Ctx, server: Server, method: AttributeValue | None) -> None:
    if method == "graceful":
        raise NotSupported("restart method graceful: overcast can only reset a guest (warm, cold)")
    if server.status is not ServerStatus.ACTIVE:
        raise _state_error(server, "restart", "active")
    await ctx.cloud.servers.reset(ctx.user, server.uuid)


async def _suspend(ctx: Ctx, server: Server, method: AttributeValue | None) -> None:
    if method == "hibernate":
        raise NotSupported("suspend method hibernate: overcast pauses guests in memory (suspend)")
    if server.status is not ServerStatus.ACTIVE:
        raise _state_error(server, "suspend", "active")
    await ctx.cloud.servers.suspend(ctx.user, server.uuid)


_ACTIONS = {"start": _start, "stop": _stop, "restart": _restart, "suspend": _suspend}
