"""IP addresses and VLANs as users see them, and the operator's IP pools."""

from __future__ import annotations

import ipaddress
import uuid as _uuid
from collections.abc import Iterator, Mapping

from sqlalchemy.exc import IntegrityError

from overcast.model.errors import BusyError, FullError, MissingError, UsageError
from overcast.model.keys import parse_name, parse_uuid
from overcast.model.resource import Ip, ResourceChanges, Vlan
from overcast.model.user import User
from overcast.store import Store
from overcast.store import resources as rows

__all__ = ["ResourceService"]


def _parse_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise UsageError(f"{value[:60]!r} is not an IP address") from None


def _candidates(pool: rows.Pool, taken: set[str]) -> Iterator[str]:
    reserved = {pool.gateway, pool.nameserver}
    for host in pool.network.hosts():
        address = str(host)
        if address not in taken and address not in reserved:
            yield address


class ResourceService:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- operator ----------------------------------------------------------

    async def add_pool(self, cidr: str, gateway: str | None, nameserver: str | None) -> None:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as err:
            raise UsageError(f"{cidr!r} is not a network in CIDR form: {err}") from None
        gateway = _parse_address(gateway) if gateway is not None else None
        nameserver = _parse_address(nameserver) if nameserver is not None else None
        if gateway is not None and ipaddress.ip_address(gateway) not in network:
            raise UsageError(f"gateway {gateway} is outside {network}")
        async with self.store.write() as conn:
            for pool in await rows.list_pools(conn):
                if pool.network.overlaps(network):
                    raise BusyError(f"{network} overlaps the pool {pool.cidr}")
            await rows.add_pool(conn, str(network), gateway, nameserver)

    # -- IPs ---------------------------------------------------------------

    async def create_ip(self, user: User, name: str | None) -> Ip:
        for _attempt in range(5):
            try:
                async with self.store.write() as conn:
                    for pool in await rows.list_pools(conn):
                        taken = await rows.allocated_in(conn, pool.cidr)
                        address = next(_candidates(pool, taken), None)
                        if address is not None:
                            await rows.insert_ip(
                                conn, address, pool.cidr, user.uuid, name or address
                            )
                            break
                    else:
                        raise FullError("no free IP address in any pool")
                return await self.ip(user, address)
            except IntegrityError:
                continue  # another manager took the same address: try the next
        raise FullError("could not allocate an IP address; try again")

    async def ip(self, user: User, address: str) -> Ip:
        async with self.store.read() as conn:
            ip = await rows.get_ip(conn, _parse_address(address))
        if ip is None or ip.user != user.uuid:
            raise MissingError(f"no ip {address}")
        return ip

    async def ips(self, user: User) -> list[Ip]:
        async with self.store.read() as conn:
            return await rows.list_ips(conn, user.uuid)

    async def set_ip(self, user: User, address: str, changes: ResourceChanges) -> Ip:
        ip = await self.ip(user, address)
        async with self.store.write() as conn:
            await rows.update_ip(conn, ip.address, **_values(changes, ip.meta))
        return await self.ip(user, address)

    async def destroy_ip(self, user: User, address: str) -> None:
        ip = await self.ip(user, address)
        async with self.store.write() as conn:
            await rows.delete_ip(conn, ip.address)

    # -- VLANs -------------------------------------------------------------

    async def create_vlan(self, user: User, name: str | None) -> Vlan:
        uuid = str(_uuid.uuid4())
        async with self.store.write() as conn:
            await rows.insert_vlan(conn, uuid, user.uuid, name or uuid)
        return await self.vlan(user, uuid)

    async def vlan(self, user: User, uuid: str) -> Vlan:
        async with self.store.read() as conn:
            vlan = await rows.get_vlan(conn, parse_uuid("resource", uuid))
        if vlan is None or vlan.user != user.uuid:
            raise MissingError(f"no vlan {uuid}")
        return vlan

    async def vlans(self, user: User) -> list[Vlan]:
        async with self.store.read() as conn:
            return await rows.list_vlans(conn, user.uuid)

    async def set_vlan(self, user: User, uuid: str, changes: ResourceChanges) -> Vlan:
        vlan = await self.vlan(user, uuid)
        async with self.store.write() as conn:
            await rows.update_vlan(conn, vlan.uuid, **_values(changes, vlan.meta))
        return await self.vlan(user, uuid)

    async def destroy_vlan(self, user: User, uuid: str) -> None:
        vlan = await self.vlan(user, uuid)
        async with self.store.write() as conn:
            await rows.delete_vlan(conn, vlan.uuid)


def _values(changes: ResourceChanges, meta: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    if changes.name is not None:
        values["name"] = parse_name("name", changes.name)
    if changes.tags is not None:
        values["tags"] = changes.tags
    if changes.meta:
        values["meta"] = {**meta, **changes.meta}
    return values
