"""HTTP Basic authentication: user UUID and secret API key."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from overcast.cluster.cloud import Cloud
from overcast.model.errors import AuthError, MethodError, MissingError
from overcast.model.user import User

__all__ = ["admin", "admin_change", "caller"]


async def caller(request: Request) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        raise AuthError("HTTP Basic credentials (user UUID and secret key) are required")
    try:
        uuid, sep, key = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
    if not sep:
        raise AuthError("malformed Basic credentials")
    cloud: Cloud = request.app.state.cloud
    return await cloud.users.authenticate(uuid, key)


async def admin(request: Request) -> User:
    """The caller, who must be an admin; others see privileged calls as missing."""
    user = await caller(request)
    if not user.admin:
        raise MissingError(f"no such command {request.url.path}")
    return user


async def admin_change(request: Request) -> User:
    """The admin caller of a privileged call that changes state. Such routes
    take GET too, so that to anyone else they are missing whatever the
    method; only a known admin hears that GET is ``405 method``."""
    user = await admin(request)
    if request.method != "POST":
        raise MethodError(f"{request.url.path} needs POST")
    return user
