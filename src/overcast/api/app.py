"""The ASGI application: routes, middleware, error handlers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from overcast.api import billing, drives, events, guests, hosts, resources, servers, users
from overcast.api.errors import UnexpectedErrors, handle_error, handle_http
from overcast.api.occi import routes as occi
from overcast.api.requestid import RequestIdMiddleware
from overcast.cluster.cloud import Cloud
from overcast.config import Settings
from overcast.model.errors import OvercastError

__all__ = ["build_app"]


def build_app(settings: Settings) -> Starlette:
    """The app; the cloud opens in the lifespan and closes with it."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cloud = await Cloud.open(settings)
        app.state.cloud = cloud
        try:
            yield
        finally:
            await cloud.close()

    return Starlette(
        routes=[
            *drives.routes,
            *resources.routes,
            *servers.routes,
            *users.routes,
            *events.routes,
            *billing.routes,
            *hosts.routes,
            *guests.routes,
            *occi.routes,
        ],
        middleware=[Middleware(RequestIdMiddleware), Middleware(UnexpectedErrors)],
        exception_handlers={
            OvercastError: handle_error,
            HTTPException: handle_http,
        },
        lifespan=lifespan,
    )
