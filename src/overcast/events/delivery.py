"""Delivering the outbox: signed callbacks, retried until acknowledged.

The :class:`Deliverer` is a background task its owner starts and stops
(the app's lifespan). It polls the outbox for due deliveries and POSTs
each one concurrently, every request bounded by an explicit timeout, so a
slow or dead receiver ties up one task and never the others. A 2xx ends a
delivery; anything else (another status, a refused connection, a timeout)
reschedules it with exponential backoff and jitter, until three days after
the event was written, after which it is abandoned.

Order: the store hands out only the oldest pending event of each (server,
URL) (:func:`overcast.store.events.due_deliveries`), so seq N+1 reaches a
receiver only after seq N was acknowledged. At least once: the outcome is
written after the POST, so a crash in between repeats it, with the same
``webhook-id``.

Requests are signed as Standard Webhooks specifies: ``webhook-id`` (the
event's UUID), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,BASE64(HMAC-SHA256(secret, id.timestamp.body))``
with the event owner's secret, which ``secret_for`` supplies.

One Deliverer per store: in-flight deliveries are known only in memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from overcast.events.outbox import payload
from overcast.model.errors import OvercastError
from overcast.store import events as rows
from overcast.store.engine import Store

__all__ = ["GIVE_UP_AFTER", "Deliverer", "SecretFor", "UrlCheck", "backoff", "sign"]

log = logging.getLogger(__name__)

#: How long (s) after an event is written its delivery is retried: the
#: promise of API.md.
GIVE_UP_AFTER = 3 * 86400.0

#: The owner's signing key for a user UUID (plain or awaitable); None when
#: the user is gone, whose events then are not sent.
SecretFor = Callable[[str], bytes | Awaitable[bytes | None] | None]
#: A last check of an event's URL before each attempt (may raise
#: :class:`overcast.model.errors.OvercastError`: the attempt fails with its message).
UrlCheck = Callable[[rows.Event, str], Awaitable[None]]


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one request."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _receiver(url: str) -> str:
    """Whom a URL reaches: its host and port (what one slow server shares)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}"
    except ValueError:  # a bad port: the request will fail on its own
        return url


def backoff(attempts: int, first: float, cap: float) -> float:
    """Seconds before retry number ``attempts`` (1 after the first failure):
    doubling from ``first`` up to ``cap``, each drawn from its upper half so
    that receivers coming back are not hit by every sender in step."""
    delay = min(first * 2.0 ** min(attempts - 1, 62), cap)
    return random.uniform(delay / 2, delay)


class Deliverer:
    """POSTs due events to their callbacks until each is acknowledged.

    ``timeout`` bounds each request; ``poll`` is how often the outbox is
    read when nothing calls :meth:`wake`; ``concurrency`` caps requests in
    flight, and ``per_receiver`` those to one receiver (host and port; half
    the concurrency by default), so that a receiver that hangs can hold
    only its share of the slots; ``first_retry`` and ``max_retry`` shape
    the backoff.
    """

    def __init__(
        self,
        store: Store,
        secret_for: SecretFor,
        *,
        timeout: float = 10.0,
        poll: float = 1.0,
        concurrency: int = 64,
        per_receiver: int | None = None,
        first_retry: float = 5.0,
        max_retry: float = 3600.0,
        give_up_after: float = GIVE_UP_AFTER,
        check: UrlCheck | None = None,
    ) -> None:
        self._store = store
        self._secret_for = secret_for
        self._check = check
        self._timeout = httpx.Timeout(timeout)
        self._poll = poll
        self._concurrency = concurrency
        self._per_receiver = per_receiver or max(concurrency // 2, 1)
        self._receivers: Counter[str] = Counter()
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._give_up_after = give_up_after
        self._wake = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("Deliverer already started")
        # Pool as large as the concurrency: a request never waits for a
        # connection another receiver's slow request holds.
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=self._concurrency),
            follow_redirects=False,
        )
        self._task = asyncio.create_task(self._run(), name="overcast-deliverer")

    async def stop(self) -> None:
        """Cancel the loop and any request in flight (those stay pending in
        the outbox and are sent again next time), then close the client."""
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._inflight.clear()
        self._receivers.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look at the outbox now (an event was just committed)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:
                # The store being unreachable must not end delivery for good.
                log.exception("reading the outbox failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()

    async def _dispatch(self) -> None:
        room = self._concurrency - len(self._inflight)
        if room <= 0:
            return
        # Room to skip what is in flight and what waits for a busy receiver.
        limit = 4 * self._concurrency + len(self._inflight)
        async with self._store.read() as tx:
            due = await rows.due_deliveries(tx, time.time(), limit)
        for delivery in due:
            event_id = delivery.event.id
            if event_id in self._inflight or len(self._inflight) >= self._concurrency:
                continue
            receiver = _receiver(delivery.url)
            if self._receivers[receiver] >= self._per_receiver:
                continue
            self._receivers[receiver] += 1
            self._inflight[event_id] = asyncio.create_task(
                self._deliver(delivery, receiver), name=f"overcast-deliver-{delivery.event.uuid}"
            )

    async def _deliver(self, delivery: rows.Delivery, receiver: str) -> None:
        event = delivery.event
        try:
            error, final = await self._post(delivery)
            now = time.time()
            async with self._store.write() as tx:
                if error is None:
                    await rows.mark_delivered(tx, event.id, now)
                else:
                    retry = None if final else self._next_attempt(delivery, now)
                    await rows.mark_failed(tx, event.id, retry, error)
            if error is not None:
                log.info("callback %s for event %s failed: %s", delivery.url, event.uuid, error)
        except Exception:
            log.exception("recording delivery of event %s failed", event.uuid)
        finally:
            self._inflight.pop(event.id, None)
            self._receivers[receiver] -= 1
            # The server's next event may now be due.
            self._wake.set()

    async def _post(self, delivery: rows.Delivery) -> tuple[str | None, bool]:
        """One attempt: (None, _) when acknowledged, else what went wrong and
        whether that is final (no retry can succeed)."""
        assert self._client is not None
        event = delivery.event
        secret = self._secret_for(event.user)
        if inspect.isawaitable(secret):
            secret = await secret
        if secret is None:
            return f"user {event.user} no longer exists", True
        assert isinstance(secret, bytes)
        if self._check is not None:
            try:
                await self._check(event, delivery.url)
            except OvercastError as err:
                return str(err), False
        body = payload(event)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event.uuid,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, event.uuid, timestamp, body),
        }
        try:
            response = await self._client.post(delivery.url, content=body, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            return f"{type(err).__name__}: {err}", False
        if response.is_success:
            return None, False
        return f"HTTP {response.status_code}", False

    def _next_attempt(self, delivery: rows.Delivery, now: float) -> float | None:
        """When to retry, or None once the promised three days are over;
        the last retry is placed at the deadline rather than skipped."""
        deadline = delivery.created + self._give_up_after
        if now >= deadline:
            return None
        delay = backoff(delivery.attempts + 1, self._first_retry, self._max_retry)
        return min(now + delay, deadline)
