"""``/hosts/…`` (admins): what hosts tell their manager.

``POST /hosts/exits`` takes a host's ``server.exit`` callback: the manager
creates guests on a host with ``callback:exit`` pointing here (credentials
in the URL's user part, sent as HTTP Basic), so each end reaches the
manager through the host's outbox. An unknown or already ended server is
acknowledged too: redelivery must end, and there is nothing left to do.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin
from overcast.api.context import READ, cloud_of
from overcast.api.negotiate import MAX_BODY, no_content
from overcast.cluster.exits import report_of_callback
from overcast.model.errors import MethodError, UsageError

__all__ = ["routes"]


async def exits(request: Request) -> Response:
    await admin(request)
    if request.method != "POST":
        raise MethodError(f"{request.url.path} needs POST")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise UsageError(f"request body is larger than {MAX_BODY} bytes")
    await cloud_of(request).servers.host_exited(report_of_callback(body))
    return no_content()


routes = [Route("/hosts/exits", exits, methods=READ)]
