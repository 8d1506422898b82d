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

Cost: reading the outbox is what limits throughput, so one read fills a
local queue that many POSTs drain, and outcomes that finish together are
written in one transaction.

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
        #: Deliveries handed out: being POSTed, or POSTed and their outcome
        #: not yet written (so that no query hands them out again).
        self._inflight: dict[int, asyncio.Task[None]] = {}
        #: Due deliveries read from the outbox and not yet started: one
        #: query feeds many starts (reading the outbox is what costs).
        self._queue: list[tuple[rows.Delivery, str]] = []  # with its receiver
        self._queried = 0.0
        self._stale = True
        #: Deliveries settled since the last read of the outbox began.
        self._settled: set[int] = set()
        #: Outcomes waiting to be written, all in one transaction.
        self._outcomes: list[tuple[rows.Delivery, str | None, bool]] = []
        self._flushing: asyncio.Task[None] | None = None
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
        the outbox and are sent again next time), write the outcomes already
        known, then close the client."""
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._flush()
        self._task = self._flushing = None
        self._inflight.clear()
        self._receivers.clear()
        self._queue.clear()
        self._stale = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look at the outbox now (an event was just committed)."""
        self._stale = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:
                # The store being unreachable must not end delivery for good.
                log.exception("reading the outbox failed; retrying")
                self._stale = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()

    async def _dispatch(self) -> None:
        if len(self._inflight) >= self._concurrency:
            return
        now = time.monotonic()
        if self._stale or not self._queue or now - self._queried >= self._poll:
            await self._refill(now)
        waiting = []
        for n, (delivery, receiver) in enumerate(self._queue):
            if len(self._inflight) >= self._concurrency:  # the rest waits too
                waiting.extend(self._queue[n:])
                break
            if self._receivers[receiver] >= self._per_receiver:
                waiting.append((delivery, receiver))
                continue
            self._receivers[receiver] += 1
            self._inflight[delivery.event.id] = asyncio.create_task(
                self._deliver(delivery, receiver), name=f"overcast-deliver-{delivery.event.uuid}"
            )
        self._queue = waiting

    async def _refill(self, now: float) -> None:
        # Enough to keep every slot busy for a while, beyond what is in
        # flight (the query returns those too until their outcome is written).
        limit = max(8 * self._concurrency, 512) + len(self._inflight)
        self._stale = False
        self._queried = now
        # Outcomes written while the query runs may be missing from what it
        # reads (PostgreSQL reads concurrently): those must not go again.
        self._settled = settled = set[int]()
        async with self._store.read() as tx:
            due = await rows.due_deliveries(tx, time.time(), limit)
        self._queue = [
            (d, _receiver(d.url))
            for d in due
            if d.event.id not in self._inflight and d.event.id not in settled
        ]

    async def _deliver(self, delivery: rows.Delivery, receiver: str) -> None:
        event = delivery.event
        try:
            error, final = await self._post(delivery)
        except Exception as err:
            log.exception("delivering event %s failed", event.uuid)
            error, final = f"{type(err).__name__}: {err}", False
        finally:
            self._receivers[receiver] -= 1
        if error is not None:
            log.info("callback %s for event %s failed: %s", delivery.url, event.uuid, error)
        self._outcomes.append((delivery, error, final))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush_soon(), name="overcast-outcomes")
        # A slot is free: start the next one from the queue.
        self._wake.set()

    async def _flush_soon(self) -> None:
        """Write outcomes that arrive close together in one transaction."""
        try:
            await asyncio.sleep(0)  # let outcomes finishing at once join
            await self._flush()
        except Exception:
            log.exception("recording delivery outcomes failed; they will be sent again")
        finally:
            self._flushing = None
            if self._outcomes:
                self._flushing = asyncio.create_task(self._flush_soon(), name="overcast-outcomes")

    async def _flush(self) -> None:
        outcomes, self._outcomes = self._outcomes, []
        if not outcomes:
            return
        now = time.time()
        try:
            async with self._store.write() as tx:
                for delivery, error, final in outcomes:
                    if error is None:
                        await rows.mark_delivered(tx, delivery.event.id, now)
                    else:
                        retry = None if final else self._next_attempt(delivery, now)
                        await rows.mark_failed(tx, delivery.event.id, retry, error)
        finally:
            # Written, or not (then still pending in the outbox, and sent
            # again: at least once).
            for delivery, _error, _final in outcomes:
                self._inflight.pop(delivery.event.id, None)
                self._settled.add(delivery.event.id)
        # A server's next event may now be due: the next read of the outbox
        # (at once if nothing else is queued, else within ``poll``) sees it.
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
