"""``/user/info`` for everyone; ``/users/…`` for admins.

To anyone else every ``/users/…`` call is ``404 missing``, whatever the
method: so the privileged calls' changing routes take GET too and answer
``405 method`` only once the caller is known to be an admin.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overcast.api.auth import admin, admin_change, caller
from overcast.api.context import CHANGE, READ, cloud_of
from overcast.api.negotiate import no_content, read_keys, reply, reply_list
from overcast.model.codec import Record
from overcast.model.user import User, parse_user_changes, parse_user_spec, quota_info

__all__ = ["routes", "user_info"]


def user_info(user: User) -> Record:
    return {
        "user": user.uuid,
        "name": user.name,
        "admin": "true" if user.admin else "false",
        **quota_info(user.quota),
    }


async def me(request: Request) -> Response:
    """The caller's info with their callback signing secret."""
    user = await caller(request)
    secret = await cloud_of(request).users.callback_secret(user.uuid)
    return reply(request, {**user_info(user), "callback:secret": secret})


async def rotate_callback_secret(request: Request) -> Response:
    """A new signing secret; the reply shows it (as ``/user/info`` will)."""
    user = await caller(request)
    secret = await cloud_of(request).users.rotate_callback_secret(user.uuid)
    return reply(request, {**user_info(user), "callback:secret": secret})


async def list_(request: Request) -> Response:
    await admin(request)
    return reply_list(request, "user", [u.uuid for u in await cloud_of(request).users.all()])


async def info_all(request: Request) -> Response:
    await admin(request)
    return reply(request, [user_info(u) for u in await cloud_of(request).users.all()])


async def info(request: Request) -> Response:
    await admin(request)
    return reply(request, user_info(await cloud_of(request).users.get(request.path_params["user"])))


async def create(request: Request) -> Response:
    """The reply carries ``secret``: the only time the key is ever shown."""
    await admin_change(request)
    spec = parse_user_spec(await read_keys(request))
    user, secret = await cloud_of(request).users.create(
        spec.name, admin=spec.admin, quota=spec.quota
    )
    return reply(request, {**user_info(user), "secret": secret})


async def set_(request: Request) -> Response:
    await admin_change(request)
    keys = await read_keys(request)
    users = cloud_of(request).users
    user = await users.get(request.path_params["user"])
    quota = parse_user_changes(keys, user)
    return reply(request, user_info(await users.set_quota(user.uuid, quota)))


async def destroy(request: Request) -> Response:
    me_ = await admin_change(request)
    await cloud_of(request).users.destroy(request.path_params["user"], caller=me_)
    return no_content()


routes = [
    Route("/user/info", me, methods=READ),
    Route("/user/callback/rotate", rotate_callback_secret, methods=CHANGE),
    Route("/users/list", list_, methods=READ),
    Route("/users/info", info_all, methods=READ),
    Route("/users/create", create, methods=READ),
    Route("/users/{user}/info", info, methods=READ),
    Route("/users/{user}/set", set_, methods=READ),
    Route("/users/{user}/destroy", destroy, methods=READ),
]
