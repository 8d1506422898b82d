"""``/hosts/…`` (admins): the host registry, and what hosts tell their manager.

``/hosts/list``, ``/hosts/info``, ``/hosts/create`` (``url``, ``cpu`` MHz,
``mem`` MiB, optional ``name``), ``/hosts/H/info``, ``/hosts/H/set``
(``name``, ``cpu``, ``mem``, ``drain``), ``/hosts/H/drain`` and
``/hosts/H/destroy`` (``409`` while it holds servers), ``/hosts/stranded``
(servers of lost hosts waiting for room). Info shows the
capacity and what running servers take of it.

``POST /hosts/exits`` takes a host's ``server.exit`` callback: the manager
creates guests on a host with ``callback:exit`` pointing here (credentials
in the URL's user part, sent as HTTP Basic), so each end reaches the
manager through the host's outbox; ``?host=H`` names the reporting host
(a report from a host that no longer holds the server is ignored). An
unknown or already ended server is acknowledged too: redelivery must end,
and there is nothing left to do.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin, admin_change
from overcast.api.context import READ, cloud_of
from overcast.api.negotiate import MAX_BODY, no_content, read_keys, reply, reply_list
from overcast.cluster.exits import report_of_callback
from overcast.model.errors import UsageError

__all__ = ["routes"]


async def exits(request: Request) -> Response:
    await admin_change(request)
    body = await request.body()
    if len(body) > MAX_BODY:
        raise UsageError(f"request body is larger than {MAX_BODY} bytes")
    host = request.query_params.get("host")
    await cloud_of(request).servers.host_exited(report_of_callback(body, host))
    return no_content()


async def stranded(request: Request) -> Response:
    """Servers whose host was lost and that no host has taken yet (retried
    every pass, never dropped): what an admin must make room for."""
    await admin(request)
    failover = cloud_of(request).failover
    waiting = failover.stranded.values() if failover is not None else ()
    return reply(
        request,
        [
            {"server": s.server, "host": s.host, "since": f"{s.since:.3f}", "reason": s.reason}
            for s in waiting
        ],
    )


async def list_(request: Request) -> Response:
    await admin(request)
    return reply_list(request, "host", [h.id for h in await cloud_of(request).hosts.all()])


async def info_all(request: Request) -> Response:
    await admin(request)
    hosts = cloud_of(request).hosts
    return reply(request, [await hosts.info(h) for h in await hosts.all()])


async def info(request: Request) -> Response:
    await admin(request)
    hosts = cloud_of(request).hosts
    return reply(request, await hosts.info(await hosts.get(request.path_params["host"])))


async def create(request: Request) -> Response:
    await admin_change(request)
    hosts = cloud_of(request).hosts
    return reply(request, await hosts.info(await hosts.create(await read_keys(request))))


async def set_(request: Request) -> Response:
    await admin_change(request)
    hosts = cloud_of(request).hosts
    host = await hosts.set(request.path_params["host"], await read_keys(request))
    return reply(request, await hosts.info(host))


async def drain(request: Request) -> Response:
    await admin_change(request)
    hosts = cloud_of(request).hosts
    return reply(
        request, await hosts.info(await hosts.set(request.path_params["host"], {"drain": "true"}))
    )


async def destroy(request: Request) -> Response:
    await admin_change(request)
    await cloud_of(request).hosts.destroy(request.path_params["host"])
    return no_content()


routes = [
    Route("/hosts/exits", exits, methods=READ),
    Route("/hosts/list", list_, methods=READ),
    Route("/hosts/stranded", stranded, methods=READ),
    Route("/hosts/info", info_all, methods=READ),
    Route("/hosts/create", create, methods=READ),
    Route("/hosts/{host}/info", info, methods=READ),
    Route("/hosts/{host}/set", set_, methods=READ),
    Route("/hosts/{host}/drain", drain, methods=READ),
    Route("/hosts/{host}/destroy", destroy, methods=READ),
]
