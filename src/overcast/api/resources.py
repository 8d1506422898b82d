"""``/resources/…`` routes: IP addresses and VLANs.

``create`` takes what ``set`` takes (``name``, ``tags``, ``user:*``), as
drives do; API.md names only ``name``, but a client that tags everything it
makes should not need a second call.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import caller
from overcast.api.context import CHANGE, READ, cloud_of
from overcast.api.negotiate import no_content, read_keys, reply, wants_json
from overcast.model.codec import Record, encode_json
from overcast.model.resource import (
    ResourceType,
    ip_info,
    parse_resource_changes,
    parse_resource_type,
    vlan_info,
)
from overcast.model.user import User

__all__ = ["routes"]


def _types(request: Request) -> list[ResourceType]:
    if "type" in request.path_params:
        return [parse_resource_type(request.path_params["type"])]
    return list(ResourceType)


async def _infos(request: Request, user: User, rtype: ResourceType) -> list[Record]:
    resources = cloud_of(request).resources
    if rtype is ResourceType.IP:
        return [ip_info(ip) for ip in await resources.ips(user)]
    return [vlan_info(vlan) for vlan in await resources.vlans(user)]


async def _one(request: Request, user: User) -> Record:
    rtype = parse_resource_type(request.path_params["type"])
    rid = request.path_params["resource"]
    resources = cloud_of(request).resources
    if rtype is ResourceType.IP:
        return ip_info(await resources.ip(user, rid))
    return vlan_info(await resources.vlan(user, rid))


async def list_(request: Request) -> Response:
    """Text: ``TYPE RESOURCE`` lines; JSON: objects with both keys."""
    user = await caller(request)
    pairs: list[Record] = []
    for rtype in _types(request):
        for record in await _infos(request, user, rtype):
            pairs.append({"type": rtype.value, "resource": record["resource"]})
    if wants_json(request):
        return Response(encode_json(pairs), media_type="application/json")
    text = "".join(f"{p['type']} {p['resource']}\n" for p in pairs)
    return Response(text, media_type="text/plain; charset=utf-8")


async def info_all(request: Request) -> Response:
    user = await caller(request)
    records: list[Record] = []
    for rtype in _types(request):
        records += await _infos(request, user, rtype)
    return reply(request, records)


async def info(request: Request) -> Response:
    user = await caller(request)
    return reply(request, await _one(request, user))


async def create(request: Request) -> Response:
    user = await caller(request)
    rtype = parse_resource_type(request.path_params["type"])
    changes = parse_resource_changes(await read_keys(request))
    resources = cloud_of(request).resources
    if rtype is ResourceType.IP:
        return reply(request, ip_info(await resources.create_ip(user, changes)))
    return reply(request, vlan_info(await resources.create_vlan(user, changes)))


async def set_(request: Request) -> Response:
    user = await caller(request)
    rtype = parse_resource_type(request.path_params["type"])
    rid = request.path_params["resource"]
    changes = parse_resource_changes(await read_keys(request))
    resources = cloud_of(request).resources
    if rtype is ResourceType.IP:
        return reply(request, ip_info(await resources.set_ip(user, rid, changes)))
    return reply(request, vlan_info(await resources.set_vlan(user, rid, changes)))


async def destroy(request: Request) -> Response:
    user = await caller(request)
    rtype = parse_resource_type(request.path_params["type"])
    rid = request.path_params["resource"]
    resources = cloud_of(request).resources
    if rtype is ResourceType.IP:
        await resources.destroy_ip(user, rid)
    else:
        await resources.destroy_vlan(user, rid)
    return no_content()


routes = [
    Route("/resources/list", list_, methods=READ),
    Route("/resources/info", info_all, methods=READ),
    Route("/resources/{type}/list", list_, methods=READ),
    Route("/resources/{type}/info", info_all, methods=READ),
    Route("/resources/{type}/create", create, methods=CHANGE),
    Route("/resources/{type}/{resource}/info", info, methods=READ),
    Route("/resources/{type}/{resource}/set", set_, methods=CHANGE),
    Route("/resources/{type}/{resource}/destroy", destroy, methods=CHANGE),
]
