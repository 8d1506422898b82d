"""IP addresses and VLANs as users see them, and the operator's IP pools.

Another user's address or VLAN is :class:`MissingError`, exactly as if it
did not exist. Checks come first and change nothing; each change is one
store transaction.
"""

from __future__ import annotations

import ipaddress
import uuid as _uuid
from collections.abc import Iterator, Mapping

from sqlalchemy.exc import IntegrityError

from overcast.model.errors import BusyError, FullError, MissingError, UsageError
from overcast.model.keys import parse_uuid
from overcast.model.resource import Ip, ResourceChanges, Vlan
from overcast.model.user import User
from overcast.store import Store
from overcast.store import resources as rows
from overcast.store import servers as server_rows
from overcast.store.engine import Tx

__all__ = ["ResourceService"]

#: How often an IP create retries after losing a race for an address to
#: another writer (PostgreSQL: the primary key decides). Each loss means
#: another create succeeded, so this bounds the concurrent creates we ride out.
_ALLOCATE_ATTEMPTS = 64

_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_address(key: str, value: str) -> _IpAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"{key}: {value[:60]!r} is not an IP address") from None


def _candidates(pool: rows.Pool, taken: set[str]) -> Iterator[str]:
    """Free host addresses of the pool, lowest first.

    ``hosts()`` leaves out the network and broadcast addresses; the gateway
    and nameserver are the operator's, never a user's.
    """
    reserved = {pool.gateway, pool.nameserver}
    for host in pool.network.hosts():
        address = str(host)
        if address not in taken and address not in reserved:
            yield address


class ResourceService:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- operator ----------------------------------------------------------

    async def pools(self) -> list[str]:
        """The operator's pools, as CIDR strings."""
        async with self.store.read() as conn:
            return [pool.cidr for pool in await rows.list_pools(conn)]

    async def add_pool(self, cidr: str, gateway: str | None, nameserver: str | None) -> None:
        """Add a range users' addresses are drawn from.

        The gateway must be a host address inside the range; the nameserver
        may be anywhere (often a resolver outside it). Neither is handed out.
        """
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=True)
        except ValueError as err:
            raise UsageError(f"{cidr[:60]!r} is not a network in CIDR form: {err}") from None
        if gateway is not None:
            address = _parse_address("gateway", gateway)
            if address not in network or (
                network.num_addresses > 2
                and address in (network.network_address, network.broadcast_address)
            ):
                raise UsageError(f"gateway {address} is not a host address of {network}")
            gateway = str(address)
        if nameserver is not None:
            nameserver = str(_parse_address("nameserver", nameserver))
        async with self.store.write() as conn:
            for pool in await rows.list_pools(conn):
                if pool.network.version == network.version and pool.network.overlaps(network):
                    raise BusyError(f"{network} overlaps the pool {pool.cidr}")
            await rows.add_pool(conn, str(network), gateway, nameserver)

    # -- IPs ---------------------------------------------------------------

    async def create_ip(self, user: User, changes: ResourceChanges | None = None) -> Ip:
        """Give the user the lowest free address of the first pool with room.

        Under SQLite writes are serial; under PostgreSQL two creates may pick
        the same address and the primary key lets only one insert it: the
        other tries again with what is then free.
        """
        changes = changes or ResourceChanges()
        for _attempt in range(_ALLOCATE_ATTEMPTS):
            try:
                async with self.store.write() as conn:
                    address, pool = await _free_address(conn)
                    await rows.insert_ip(conn, address, pool, user.uuid, changes.name or address)
                    if values := _values(changes, {}, name=False):
                        await rows.update_ip(conn, address, **values)
            except IntegrityError:
                continue
            return await self.ip(user, address)
        raise BusyError("could not allocate an IP address: too many concurrent requests; retry")

    async def ip(self, user: User, address: str) -> Ip:
        async with self.store.read() as conn:
            ip = await rows.get_ip(conn, str(_parse_address("resource", address)))
        if ip is None or ip.user != user.uuid:
            raise MissingError(f"no ip {address}")
        return ip

    async def ips(self, user: User) -> list[Ip]:
        async with self.store.read() as conn:
            return await rows.list_ips(conn, user.uuid)

    async def set_ip(self, user: User, address: str, changes: ResourceChanges) -> Ip:
        ip = await self.ip(user, address)
        if values := _values(changes, ip.meta):
            async with self.store.write() as conn:
                await rows.update_ip(conn, ip.address, **values)
        return await self.ip(user, ip.address)

    async def destroy_ip(self, user: User, address: str) -> None:
        """Give the address back to its pool, for anyone's next create."""
        ip = await self.ip(user, address)
        async with self.store.write() as conn:
            if server := await server_rows.ip_in_use(conn, ip.address):
                raise BusyError(f"ip {ip.address} is in use by server {server}")
            await rows.delete_ip(conn, ip.address)

    # -- VLANs -------------------------------------------------------------

    async def create_vlan(self, user: User, changes: ResourceChanges | None = None) -> Vlan:
        changes = changes or ResourceChanges()
        uuid = str(_uuid.uuid4())
        async with self.store.write() as conn:
            await rows.insert_vlan(conn, uuid, user.uuid, changes.name or uuid)
            if values := _values(changes, {}, name=False):
                await rows.update_vlan(conn, uuid, **values)
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
        if values := _values(changes, vlan.meta):
            async with self.store.write() as conn:
                await rows.update_vlan(conn, vlan.uuid, **values)
        return await self.vlan(user, vlan.uuid)

    async def destroy_vlan(self, user: User, uuid: str) -> None:
        vlan = await self.vlan(user, uuid)
        async with self.store.write() as conn:
            if server := await server_rows.vlan_in_use(conn, vlan.uuid):
                raise BusyError(f"vlan {vlan.uuid} is in use by server {server}")
            await rows.delete_vlan(conn, vlan.uuid)


async def _free_address(conn: Tx) -> tuple[str, str]:
    """A free address and its pool's CIDR, or :class:`FullError`."""
    for pool in await rows.list_pools(conn):
        taken = await rows.allocated_in(conn, pool.cidr)
        address = next(_candidates(pool, taken), None)
        if address is not None:
            return address, pool.cidr
    raise FullError("no free IP address in any pool")


def _values(
    changes: ResourceChanges, meta: Mapping[str, str], *, name: bool = True
) -> dict[str, object]:
    """The columns ``changes`` sets; ``user:*`` keys merge into ``meta``."""
    values: dict[str, object] = {}
    if name and changes.name is not None:
        values["name"] = changes.name
    if changes.tags is not None:
        values["tags"] = changes.tags
    if changes.meta:
        values["meta"] = {**meta, **changes.meta}
    return values
