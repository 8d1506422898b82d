"""Users and authentication.

UUIDs from requests are normalised (lower case) before any lookup or
change, so that every spelling of one UUID names the same user.
"""

from __future__ import annotations

import hmac
import time

from sqlalchemy.exc import IntegrityError

from overcast.model.errors import AuthError, BusyError, MissingError, UsageError
from overcast.model.keys import parse_name, parse_uuid
from overcast.model.user import (
    Quota,
    User,
    callback_key,
    digest_key,
    new_callback_secret,
    new_key,
)
from overcast.store import Store
from overcast.store import users as rows

__all__ = ["UserService"]


#: How long a successful authentication is remembered. Changes made in this
#: process forget it at once; changes by another process (the CLI, another
#: manager) show within this many seconds.
AUTH_TTL = 2.0
_AUTH_CACHE_MAX = 10_000


class UserService:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Every request authenticates: remembering recent successes saves a
        # store transaction on the API's hottest path.
        self._known: dict[str, tuple[User, float]] = {}

    def _forget(self) -> None:
        self._known.clear()

    async def authenticate(self, uuid: str, key: str) -> User:
        """The user whose UUID and secret key these are, or :class:`AuthError`."""
        digest = digest_key(key)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            user: User | None = known[0]
        else:
            async with self.store.read() as conn:
                user = await rows.user_by_digest(conn, digest)
            if user is not None:
                if len(self._known) >= _AUTH_CACHE_MAX:
                    self._known.clear()
                self._known[digest] = (user, now + AUTH_TTL)
        # The digest lookup finds the key; the UUID must match too.
        if user is None or not hmac.compare_digest(user.uuid, uuid.lower()):
            raise AuthError("wrong user UUID or secret key")
        return user

    async def create(
        self, name: str, *, admin: bool = False, quota: Quota | None = None
    ) -> tuple[User, str]:
        """A new user and its secret key (shown once, stored only hashed)."""
        name = parse_name("name", name)
        key = new_key()
        async with self.store.write() as conn:
            user = await rows.insert_user(conn, name, digest_key(key), admin=admin)
            if quota is not None and quota != user.quota:
                await rows.set_quota(conn, user.uuid, quota)
                user = User(user.uuid, user.name, user.admin, quota)
        return user, key

    async def ensure_admin(self, uuid: str, key: str, name: str = "manager") -> User:
        """An administrator ``uuid`` whose key is ``key``: how a host agent
        accepts its manager's credentials as its own (``manager`` setting)."""
        uuid = parse_uuid("manager user", uuid)
        async with self.store.write() as conn:
            user = await rows.get_user(conn, uuid, lock=True)
            if user is None:
                user = await rows.insert_user(conn, name, digest_key(key), admin=True, uuid=uuid)
            elif not user.admin:
                raise BusyError(f"user {uuid} exists and is not an administrator")
            else:
                await rows.set_user_key(conn, uuid, digest_key(key))
        self._forget()
        return user

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
        user = await self.get(uuid)
        async with self.store.write() as conn:
            await rows.set_quota(conn, user.uuid, quota)
        self._forget()
        return await self.get(user.uuid)

    async def rotate_key(self, uuid: str) -> str:
        user = await self.get(uuid)
        key = new_key()
        async with self.store.write() as conn:
            await rows.set_user_key(conn, user.uuid, digest_key(key))
        self._forget()
        return key

    async def callback_secret(self, uuid: str) -> str:
        """The user's callback signing secret (``whsec_…``)."""
        async with self.store.read() as conn:
            secret = await rows.callback_secret(conn, parse_uuid("user", uuid))
        if secret is None:
            raise MissingError(f"no user {uuid}")
        return secret

    async def rotate_callback_secret(self, uuid: str) -> str:
        """A new signing secret; callbacks sent from now on are signed with it."""
        user = await self.get(uuid)
        secret = new_callback_secret()
        async with self.store.write() as conn:
            await rows.set_callback_secret(conn, user.uuid, secret)
        return secret

    async def signing_key(self, uuid: str) -> bytes | None:
        """The HMAC key for the user's callbacks; None once the user is gone.
        Read for every delivery, so a rotation applies to the next request."""
        async with self.store.read() as conn:
            secret = await rows.callback_secret(conn, uuid)
        return None if secret is None else callback_key(secret)

    async def destroy(self, uuid: str, *, caller: User) -> None:
        """Delete a user who owns nothing any more (else :class:`BusyError`)."""
        user = await self.get(uuid)
        if user.uuid == caller.uuid:
            raise UsageError("an admin cannot destroy their own user")
        try:
            async with self.store.write() as conn:
                owned = await rows.owned_kinds(conn, user.uuid)
                if not owned:
                    await rows.delete_user(conn, user.uuid)
            self._forget()
        except IntegrityError:
            # PostgreSQL: an object was created for the user after the check
            # and its foreign key refused the delete.
            owned = ["new objects"]
        if owned:
            raise BusyError(f"user {user.uuid} still owns {', '.join(owned)}; destroy them first")
