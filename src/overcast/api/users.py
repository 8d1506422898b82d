"""``/user/info`` for everyone; ``/users/…`` for admins."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin, caller
from overcast.api.negotiate import no_content, read_keys, reply, reply_list
from overcast.cluster.cloud import Cloud
from overcast.model.codec import Record
from overcast.model.errors import UsageError
from overcast.model.keys import parse_bool
from overcast.model.user import User, parse_quota, quota_info

__all__ = ["routes", "user_info"]

READ = ["GET", "POST"]
CHANGE = ["POST"]


def _cloud(request: Request) -> Cloud:
    cloud: Cloud = request.app.state.cloud
    return cloud


def user_info(user: User) -> Record:
    return {
        "user": user.uuid,
        "name": user.name,
        "admin": "true" if user.admin else "false",
        **quota_info(user.quota),
    }


async def me(request: Request) -> Response:
    return reply(request, user_info(await caller(request)))


async def list_(request: Request) -> Response:
    await admin(request)
    return reply_list(request, "user", [u.uuid for u in await _cloud(request).users.all()])


async def info_all(request: Request) -> Response:
    await admin(request)
    return reply(request, [user_info(u) for u in await _cloud(request).users.all()])


async def info(request: Request) -> Response:
    await admin(request)
    return reply(request, user_info(await _cloud(request).users.get(request.path_params["user"])))


async def create(request: Request) -> Response:
    """The reply carries ``secret``: the only time the key is ever shown."""
    await admin(request)
    keys = await read_keys(request)
    unknown = set(keys) - {"name", "admin"}
    if unknown:
        raise UsageError(f"unknown key {sorted(unknown)[0]}")
    if "name" not in keys:
        raise UsageError("missing key name")
    is_admin = parse_bool("admin", keys["admin"]) if "admin" in keys else False
    user, secret = await _cloud(request).users.create(keys["name"], admin=is_admin)
    return reply(request, {**user_info(user), "secret": secret})


async def set_(request: Request) -> Response:
    await admin(request)
    users = _cloud(request).users
    user = await users.get(request.path_params["user"])
    quota = parse_quota(await read_keys(request), user.quota)
    return reply(request, user_info(await users.set_quota(user.uuid, quota)))


async def destroy(request: Request) -> Response:
    me_ = await admin(request)
    await _cloud(request).users.destroy(request.path_params["user"], caller=me_)
    return no_content()


routes = [
    Route("/user/info", me, methods=READ),
    Route("/users/list", list_, methods=READ),
    Route("/users/info", info_all, methods=READ),
    Route("/users/create", create, methods=CHANGE),
    Route("/users/{user}/info", info, methods=READ),
    Route("/users/{user}/set", set_, methods=CHANGE),
    Route("/users/{user}/destroy", destroy, methods=CHANGE),
]
