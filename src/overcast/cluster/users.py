"""Users and authentication."""

from __future__ import annotations

import hmac

from overcast.model.errors import AuthError, BusyError, MissingError, UsageError
from overcast.model.keys import parse_name, parse_uuid
from overcast.model.user import Quota, User, digest_key, new_key
from overcast.store import Store
from overcast.store import users as rows

__all__ = ["UserService"]


class UserService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(self, uuid: str, key: str) -> User:
        """The user whose UUID and secret key these are, or :class:`AuthError`."""
        digest = digest_key(key)
        async with self.store.read() as conn:
            user = await rows.user_by_digest(conn, digest)
        # The digest lookup finds the key; the UUID must match too.
        if user is None or not hmac.compare_digest(user.uuid, uuid.lower()):
            raise AuthError("wrong user UUID or secret key")
        return user

    async def create(self, name: str, *, admin: bool = False) -> tuple[User, str]:
        """A new user and its secret key (shown once, stored only hashed)."""
        key = new_key()
        async with self.store.write() as conn:
            user = await rows.insert_user(
                conn, parse_name("name", name), digest_key(key), admin=admin
            )
        return user, key

    async def get(self, uuid: str) -> User:
        async with self.store.read() as conn:
            user = await rows.get_user(conn, parse_uuid("user", uuid))
        if user is None:
            raise MissingError(f"no user {uuid}")
        return user

    async def all(self) -> list[User]:
        async with self.store.read() as conn:
            return await rows.list_users(conn)

    async def count_admins(self) -> int:
        async with self.store.read() as conn:
            return await rows.count_users(conn, admin=True)

    async def set_quota(self, uuid: str, quota: Quota) -> User:
        await self.get(uuid)
        async with self.store.write() as conn:
            await rows.set_quota(conn, uuid, quota)
        return await self.get(uuid)

    async def rotate_key(self, uuid: str) -> str:
        await self.get(uuid)
        key = new_key()
        async with self.store.write() as conn:
            await rows.set_user_key(conn, uuid, digest_key(key))
        return key

    async def destroy(self, uuid: str, *, caller: User) -> None:
        if uuid == caller.uuid:
            raise UsageError("an admin cannot destroy their own user")
        await self.get(uuid)
        async with self.store.write() as conn:
            if owned := await rows.owned_kinds(conn, uuid):
                raise BusyError(f"user {uuid} still owns {', '.join(owned)}; destroy them first")
            await rows.delete_user(conn, uuid)
