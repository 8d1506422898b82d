"""This host's etcd lease: the right to run guests, kept alive or given up in time.

DESIGN.md ("Hosts, leases, failover"): a host holds one etcd lease; its host
key ``overcast/hosts/<host-id>`` and one key ``overcast/guests/<server>``
(value: the host id) per guest it runs are attached to it. The guest key
*is* the right to run the guest: the manager revives a guest elsewhere only
after its key has vanished, i.e. after the lease ended. So a host that
cannot prove its lease still lives must have killed its guests before the
lease can end at etcd. :class:`HostLease` does that:

* A renewal is counted from the moment its request was *sent*: etcd handled
  it no earlier, so the lease ends no earlier than that plus the TTL. The
  host may run guests until ``sent + TTL - margin`` (the *validity point*),
  the margin covering the kill itself, scheduling delays and clock-rate
  drift. Renewals go every ``TTL / 3``; a failed one is retried every
  ``retry`` seconds, each attempt cut off at the validity point.
* After each renewal the point is written to ``DATA/lease`` (see
  :mod:`overcast.host.watchdog`, which fences from that file alone if this
  process hangs).
* At the validity point without a confirmed renewal, or as soon as etcd
  says the lease is gone, it *fences*: marks the record ended (so the
  watchdog sweeps too), calls ``fence()`` (kill every guest), then revokes
  the old lease if it can and joins again with a new one, empty.
* Every wake-up first compares the clocks with the point, before anything
  else: a process frozen past it (SIGSTOP, cgroup freezer, a suspended
  machine: hence ``CLOCK_BOOTTIME``, which counts suspend, besides the
  wall clock) fences at once and never tries to renew first. A renewal
  whose answer (or whose record write) came after the old point also
  fences: for that moment the record said "ended", and the watchdog may
  have acted on it.

:func:`guest_killer` is the ``fence`` to use with a host agent: it SIGKILLs
the QEMU of every run directory through the pidfiles, as the watchdog does,
rather than calling :meth:`HostAgent.stop` per guest. That kills all guests
at once, including one whose start is under way or which is not adopted
yet, and does not wait for each end to be reported to the manager (who may
be unreachable in the very partition that forced the fence); the agent's
watchers still see each end and report it.

A new run of the agent resumes the lease of ``DATA/lease`` if its point has
not passed (guests keep running across an agent restart); otherwise it
fences first and joins empty.

Not here: what the manager does when keys vanish, placement, the agent's
API; telling the manager that reported ends were a fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from overcast.host.watchdog import (
    LEASE_FILE,
    Clocks,
    Validity,
    kill_guests,
    read_validity,
    write_validity,
)
from overcast.store.etcd import Etcd, LeaseLost

__all__ = [
    "GUESTS",
    "HOSTS",
    "Fence",
    "FenceAction",
    "HostLease",
    "guest_key",
    "guest_killer",
    "host_key",
]

log = logging.getLogger(__name__)

HOSTS = "overcast/hosts/"
GUESTS = "overcast/guests/"

FenceAction = Callable[[], Awaitable[None]]


def host_key(host_id: str) -> str:
    return HOSTS + host_id


def guest_key(server: str) -> str:
    return GUESTS + server


def guest_killer(run: Path) -> FenceAction:
    """A ``fence`` that SIGKILLs every QEMU under ``run`` (the agent's run
    directories) and returns once they have ended (or after a second).

    It blocks the event loop while it kills, on purpose: nothing else should
    happen on a host that is fencing."""

    async def fence() -> None:
        kill_guests(run)

    return fence


@dataclass(frozen=True)
class Fence:
    """One fence: why, and when (wall clock) against the last renewal.

    ``renewed`` is when the last confirmed renewal was sent (0: none);
    ``began`` when fencing began and ``done`` when ``fence()`` returned.
    """

    reason: str
    lease: int
    renewed: float
    began: float
    done: float


class HostLease:
    """This host's lease in ``etcd``, for host ``host_id`` whose data
    directory is ``data``.

    ``advertise`` is the host key's value (what the manager needs to reach
    the host). ``ttl`` is the lease's time to live in seconds; ``margin``
    how long before its end the host stops trusting it; ``renew_every``
    (default ``ttl / 3``) the renewal period; ``retry`` the pause after a
    failed renewal or join. Call :meth:`start`, then :meth:`close` (or
    :meth:`leave`).
    """

    def __init__(
        self,
        etcd: Etcd,
        host_id: str,
        data: Path,
        fence: FenceAction,
        *,
        advertise: str = "",
        ttl: int = 5,
        margin: float = 1.0,
        renew_every: float | None = None,
        retry: float = 0.25,
    ) -> None:
        if not host_id or "/" in host_id:
            raise ValueError(f"host id {host_id!r} must be non-empty, without '/'")
        if not 0 < margin < ttl:
            raise ValueError(f"margin {margin} must be between 0 and the TTL {ttl}")
        self.renew_every = ttl / 3 if renew_every is None else renew_every
        if not 0 < self.renew_every < ttl - margin:
            raise ValueError(f"renewals every {self.renew_every} s cannot keep a {ttl} s lease")
        self.etcd = etcd
        self.host_id = host_id
        self.data = data.absolute()
        self.path = self.data / LEASE_FILE
        self.advertise = advertise
        self.ttl = ttl
        self.margin = margin
        self.retry = retry
        #: Every fence of this object's life, oldest first.
        self.fences: list[Fence] = []
        self._fence_action = fence
        self._lease: int | None = None
        self._validity: Validity | None = None
        self._next_attempt = 0.0  # CLOCK_BOOTTIME
        self._failures = 0
        self._guests: set[str] = set()
        self._settled = asyncio.Event()
        self._resumed = False
        self._task: asyncio.Task[None] | None = None

    # -- state ---------------------------------------------------------------

    @property
    def lease(self) -> int | None:
        """The lease held now (None while fenced and not joined again)."""
        return self._lease

    @property
    def valid_until(self) -> float | None:
        """The validity point, wall clock (None while no lease is held)."""
        return self._validity.valid_until if self._validity else None

    @property
    def renewed(self) -> float:
        """When the last confirmed renewal (or grant) was sent, wall clock."""
        return self._validity.renewed if self._validity else 0.0

    @property
    def guests(self) -> frozenset[str]:
        """The servers whose keys this lease holds."""
        return frozenset(self._guests)

    def valid(self) -> bool:
        """Whether this host may run guests now."""
        return self._validity is not None and not self._validity.passed(Clocks.now())

    def holds(self, server: str) -> bool:
        """Whether ``server``'s key is held under the lease held now: a
        fence forgets every key, and a new lease holds none until claimed."""
        return self.valid() and server in self._guests

    # -- verbs ---------------------------------------------------------------

    async def start(self) -> None:
        """Resume the previous run's lease or join with a new one; return once
        a lease is held (waiting for etcd as long as it takes: bound it with
        a timeout if needed). A previous lease that lapsed, or could not be
        renewed before its point, is fenced first; so is whatever runs here
        when there was no lease at all (a host joins empty)."""
        if self._task is not None:
            raise RuntimeError("the host lease has been started already")
        self.data.mkdir(parents=True, exist_ok=True)
        self._settled.clear()
        prior = read_validity(self.path)
        if prior is not None and prior.host == self.host_id and not prior.passed(Clocks.now()):
            self._lease, self._validity, self._resumed = prior.lease, prior, True
            log.info("resuming lease %x, valid for %.2f s", prior.lease, self._left())
        elif prior is not None:
            await self._fence_now(prior.lease, prior.renewed, "the previous run's lease lapsed")
        else:
            await self._kill()  # no record: nothing here holds a key
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.host_id}")
        settled = asyncio.create_task(self._settled.wait())
        try:
            await asyncio.wait({self._task, settled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
        if not self._settled.is_set():
            self._task.result()  # the loop died: raise why
        if self._resumed and self._lease is not None:
            lease = self._lease
            await self.etcd.put(host_key(self.host_id), self.advertise, lease=lease)
            kvs, _ = await self.etcd.get_prefix(GUESTS)
            if self._lease == lease:
                self._guests = {
                    kv.key.removeprefix(GUESTS)
                    for kv in kvs
                    if kv.lease == lease and kv.value == self.host_id
                }

    async def claim_guest(self, server: str) -> bool:
        """Take the right to run ``server``: True if its key is now this
        host's (already ours counts), False if another holds it or the lease
        was fenced meanwhile. :class:`LeaseLost` if no valid lease is held."""
        lease = self._lease
        if lease is None or not self.valid():
            raise LeaseLost(f"host {self.host_id} holds no valid lease")
        key = guest_key(server)
        won = await self.etcd.put_if_absent(key, self.host_id, lease=lease)
        if not won:
            kv = await self.etcd.get(key)
            won = kv is not None and kv.lease == lease and kv.value == self.host_id
        if won and self._lease == lease and self.valid():
            self._guests.add(server)
            return True
        return False  # a key taken under a fenced lease goes with that lease

    async def release_guest(self, server: str) -> bool:
        """Give up ``server``'s key (its guest no longer runs here); False if
        it was not this host's."""
        self._guests.discard(server)
        return await self.etcd.delete_if(guest_key(server), self.host_id)

    async def close(self) -> None:
        """Stop renewing and keep the lease: a new run resumes it before its
        point, or else the guests are fenced (by the watchdog, or by that
        run) and the lease ends."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def leave(self) -> None:
        """Leave the cluster: kill every guest, revoke the lease (its keys go
        at once), and leave the record ended."""
        await self.close()
        if self._lease is not None:
            await self._fence_now(self._lease, self.renewed, "leaving the cluster")

    # -- the loop --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._step()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("the lease loop failed: fencing")
            if self._lease is not None:
                await self._fence_now(self._lease, self.renewed, "the lease loop failed")
            raise

    async def _step(self) -> None:
        """One wake-up: first the clocks against the point, then maybe one
        renewal (or join)."""
        validity, lease = self._validity, self._lease
        if validity is None or lease is None:
            if not await self._join():
                await asyncio.sleep(self.retry)
            return
        now = Clocks.now()
        if validity.passed(now):
            late = now.boot - validity.boottime_until
            why = f"no renewal confirmed in time ({late:.3f} s past the point)"
            await self._fence_now(lease, validity.renewed, why)
            return
        if now.boot < self._next_attempt:
            await asyncio.sleep(min(self._next_attempt, validity.boottime_until) - now.boot)
            return
        await self._renew(lease, validity)

    async def _renew(self, lease: int, old: Validity) -> None:
        sent = Clocks.now()
        self._next_attempt = sent.boot + self.retry
        log.debug("renewing lease %x", lease)
        try:
            async with asyncio.timeout(old.remaining(sent)):
                ttl = await self.etcd.keepalive(lease)
        except LeaseLost as err:
            await self._fence_now(lease, old.renewed, f"etcd: {err}")
            return
        except Exception as err:  # unreachable, timed out, garbled: try again until the point
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            left = old.remaining(Clocks.now())
            log.log(level, "cannot renew lease %x (%r); %.2f s left", lease, err, left)
            return
        late = "the renewal was confirmed after the point"
        if old.passed(Clocks.now()):  # e.g. frozen while it was under way
            await self._fence_now(lease, old.renewed, late)
            return
        new = self._validity_from(lease, sent, ttl)
        try:
            write_validity(self.path, new)
        except OSError as err:  # the watchdog goes by the file: so must we
            log.error("cannot write %s: %s; the renewal does not count", self.path, err)
            return
        if old.passed(Clocks.now()):  # the record said "ended" a while: the watchdog may have acted
            await self._fence_now(lease, old.renewed, late)
            return
        if self._failures:
            log.warning("renewed lease %x after %d failed attempts", lease, self._failures)
        self._failures = 0
        self._validity = new
        self._next_attempt = sent.boot + self.renew_every
        log.debug("renewed lease %x: valid for %.3f s", lease, new.remaining(Clocks.now()))
        self._settled.set()

    async def _join(self) -> bool:
        """Take a new lease and put the host key; True once held."""
        sent = Clocks.now()
        try:
            async with asyncio.timeout(self.ttl - self.margin):
                lease = await self.etcd.grant(self.ttl)
        except Exception as err:
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "host %s cannot join (%r); trying again", self.host_id, err)
            return False
        validity = self._validity_from(lease, sent, self.ttl)
        try:
            async with asyncio.timeout(validity.remaining(Clocks.now())):
                await self.etcd.put(host_key(self.host_id), self.advertise, lease=lease)
            write_validity(self.path, validity)
        except Exception as err:
            log.warning("cannot join with lease %x: %s: %s", lease, type(err).__name__, err)
            await self._revoke(lease)
            return False
        if validity.passed(Clocks.now()):
            await self._revoke(lease)
            return False
        self._lease, self._validity, self._failures = lease, validity, 0
        self._next_attempt = sent.boot + self.renew_every
        log.info("host %s joined with lease %x (ttl %d s)", self.host_id, lease, self.ttl)
        self._settled.set()
        return True

    def _validity_from(self, lease: int, sent: Clocks, ttl: int) -> Validity:
        span = min(ttl, self.ttl) - self.margin
        return Validity(
            host=self.host_id,
            lease=lease,
            valid_until=sent.wall + span,
            boottime_until=sent.boot + span,
            boot_id=sent.boot_id,
            renewed=sent.wall,
        )

    def _left(self) -> float:
        return self._validity.remaining(Clocks.now()) if self._validity else 0.0

    # -- fencing ---------------------------------------------------------------

    async def _fence_now(self, lease: int, renewed: float, reason: str) -> None:
        """Give up ``lease``: record it ended, kill every guest, revoke it."""
        began = Clocks.now()
        log.error("fencing host %s (lease %x): %s", self.host_id, lease, reason)
        self._lease, self._validity = None, None
        self._guests.clear()
        self._resumed, self._failures = False, 0
        ended = Validity(self.host_id, lease, 0.0, 0.0, began.boot_id, 0.0)
        try:
            write_validity(self.path, ended)  # the watchdog sweeps from now on, too
        except OSError as err:
            log.error("cannot write %s: %s", self.path, err)
        await self._kill()
        self.fences.append(Fence(reason, lease, renewed, began.wall, Clocks.now().wall))
        await self._revoke(lease)

    async def _kill(self) -> None:
        try:
            await self._fence_action()
        except Exception:
            log.exception("fence() failed; the watchdog is left to kill the guests")

    async def _revoke(self, lease: int) -> None:
        """End ``lease`` at etcd now if it can be reached (its keys go at
        once); otherwise it ends by itself."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.etcd.revoke(lease)
