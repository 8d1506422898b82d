"""``/guests/…`` (admins): this machine's host agent, as a manager sees it.

A manager drives a remote host through the host's ordinary server API
(:mod:`overcast.host.remote`), but the server info a user sees is not what
the manager needs to know of a guest: it needs the agent's own view, the
:class:`~overcast.host.agent.RunningGuest` (QEMU's run state, device ids,
counters, the VNC address chosen here), exactly as :class:`LocalHost
<overcast.host.client.LocalHost>` would hand it over in-process.

``/guests/list``: the servers whose guests run here (a list of
``server`` like ``/servers/list``). ``/guests/S/info``: that guest's
``RunningGuest``, always JSON in :mod:`overcast.host.wire`'s shape;
``404 missing`` when it does not run here. Both are reads (GET or POST);
to anyone but an admin they do not exist.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin
from overcast.api.context import READ, cloud_of
from overcast.api.negotiate import reply_list
from overcast.host.client import HostClient
from overcast.host.wire import encode_running_guest
from overcast.model.errors import MissingError

__all__ = ["routes"]


def _host(request: Request) -> HostClient:
    host = cloud_of(request).host
    if host is None:
        raise MissingError("this machine runs no guests")
    return host


async def list_(request: Request) -> Response:
    await admin(request)
    running = await _host(request).running()
    return reply_list(request, "server", sorted(running))


async def info(request: Request) -> Response:
    await admin(request)
    guest = await _host(request).info(request.path_params["server"])
    return Response(json.dumps(encode_running_guest(guest)), media_type="application/json")


routes = [
    Route("/guests/list", list_, methods=READ),
    Route("/guests/{server}/info", info, methods=READ),
]
