"""``/servers/…`` routes.

Beyond API.md's calls, ``POST /servers/S/suspend`` and ``/resume`` pause and
resume a running guest (overcast's own; OCCI's ``suspend`` and ``start``)
and answer 200 with the info, ``status paused`` or ``active``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin_change, caller
from overcast.api.context import CHANGE, READ, cloud_of
from overcast.api.negotiate import no_content, read_keys, reply, reply_list
from overcast.cluster.servers import ServerService
from overcast.model.user import User

__all__ = ["routes"]


def _servers(request: Request) -> ServerService:
    return cloud_of(request).servers


async def list_(request: Request) -> Response:
    user = await caller(request)
    servers = await _servers(request).of_user(user)
    return reply_list(request, "server", [s.uuid for s in servers])


async def info_all(request: Request) -> Response:
    user = await caller(request)
    service = _servers(request)
    return reply(request, [await service.info(s) for s in await service.of_user(user)])


async def info(request: Request) -> Response:
    user = await caller(request)
    service = _servers(request)
    return reply(
        request, await service.info(await service.owned(user, request.path_params["server"]))
    )


async def create(request: Request) -> Response:
    """Returns once the guest runs (or, for ``/stopped``, once defined)."""
    user = await caller(request)
    keys = await read_keys(request)
    service = _servers(request)
    stopped = request.url.path.rstrip("/").endswith("/stopped")
    return reply(request, await service.info(await service.create(user, keys, stopped=stopped)))


async def create_numbered(request: Request) -> Response:
    """``/servers/S/create`` (admins): create with the given id, as a
    manager asks its hosts to; to anyone else there is no such call."""
    user = await admin_change(request)
    keys = await read_keys(request)
    service = _servers(request)
    server = await service.create(user, keys, uuid=request.path_params["server"])
    return reply(request, await service.info(server))


async def set_(request: Request) -> Response:
    user = await caller(request)
    keys = await read_keys(request)
    service = _servers(request)
    server = await service.set(user, request.path_params["server"], keys)
    return reply(request, await service.info(server))


async def start(request: Request) -> Response:
    user = await caller(request)
    service = _servers(request)
    return reply(
        request, await service.info(await service.start(user, request.path_params["server"]))
    )


async def suspend(request: Request) -> Response:
    user = await caller(request)
    service = _servers(request)
    return reply(
        request, await service.info(await service.suspend(user, request.path_params["server"]))
    )


async def resume(request: Request) -> Response:
    user = await caller(request)
    service = _servers(request)
    return reply(
        request, await service.info(await service.resume(user, request.path_params["server"]))
    )


Verb = Callable[[ServerService, User, str], Awaitable[None]]

#: The calls that act on a running guest and answer 204.
_VERBS: dict[str, Verb] = {
    "shutdown": ServerService.shutdown,
    "stop": ServerService.stop,
    "reset": ServerService.reset,
    "destroy": ServerService.destroy,
}


def _verb(name: str) -> Callable[[Request], Awaitable[Response]]:
    act = _VERBS[name]

    async def endpoint(request: Request) -> Response:
        user = await caller(request)
        await act(_servers(request), user, request.path_params["server"])
        return no_content()

    return endpoint


routes = [
    Route("/servers/list", list_, methods=READ),
    Route("/servers/info", info_all, methods=READ),
    Route("/servers/create", create, methods=CHANGE),
    Route("/servers/create/stopped", create, methods=CHANGE),
    Route("/servers/{server}/create", create_numbered, methods=READ),
    Route("/servers/{server}/info", info, methods=READ),
    Route("/servers/{server}/set", set_, methods=CHANGE),
    Route("/servers/{server}/start", start, methods=CHANGE),
    Route("/servers/{server}/suspend", suspend, methods=CHANGE),
    Route("/servers/{server}/resume", resume, methods=CHANGE),
    *(Route(f"/servers/{{server}}/{name}", _verb(name), methods=CHANGE) for name in _VERBS),
]
