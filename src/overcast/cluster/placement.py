"""Which host a new guest goes to (issue 7): a pure decision over a snapshot.

The manager reads the hosts' capacities and what runs where from the store,
then asks :func:`place` within the create's transaction, so the room it
finds is still there when the row is inserted. Pure, so it is tested with
hypothesis and benchmarked with thousands of simulated hosts.

The rules, in order:

1. An administrator's ``host`` pin chooses the host, which must still have
   room (a pin is a placement, not an override of capacity).
2. Draining hosts and hosts without room for the guest's memory and cpu
   are out. Memory is a hard limit (guests would swap or be killed); cpu
   may be overcommitted by the host's factor.
3. ``avoid:servers`` and ``avoid:drives`` rule out hosts running any of
   those servers or a server holding any of those drives: a user's way to
   keep replicas off one machine. When that leaves no host, the create
   fails rather than quietly break the user's wish.
4. Spread: the host with the most free memory (as a share of its own) wins,
   then the fewest guests, then the host id, so that equal hosts fill
   evenly and the choice is stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from overcast.model.errors import FullError, MissingError

__all__ = ["Guest", "HostLoad", "place"]


@dataclass(frozen=True)
class HostLoad:
    """One host as placement sees it: capacity, what it runs, and whether
    it takes new guests."""

    id: str
    cpu: int  # MHz
    mem: int  # MiB
    used_cpu: int = 0
    used_mem: int = 0
    guests: int = 0
    servers: frozenset[str] = field(default_factory=frozenset)
    drives: frozenset[str] = field(default_factory=frozenset)
    draining: bool = False
    #: How far cpu may be promised beyond the host's MHz.
    cpu_overcommit: float = 4.0

    def fits(self, guest: Guest) -> bool:
        return (
            self.used_mem + guest.mem <= self.mem
            and self.used_cpu + guest.cpu <= self.cpu * self.cpu_overcommit
        )

    def score(self) -> tuple[float, int, str]:
        """Smaller is better: most free memory by share, fewest guests, id."""
        free = (self.mem - self.used_mem) / self.mem if self.mem > 0 else 0.0
        return (-free, self.guests, self.id)


@dataclass(frozen=True)
class Guest:
    """What a new guest needs and where it must not go."""

    cpu: int  # MHz
    mem: int  # MiB
    avoid_servers: frozenset[str] = field(default_factory=frozenset)
    avoid_drives: frozenset[str] = field(default_factory=frozenset)
    pin: str | None = None


def place(guest: Guest, hosts: Sequence[HostLoad]) -> HostLoad:
    """The host for ``guest``; :class:`FullError` when none may take it,
    :class:`MissingError` for a pin to an unknown host."""
    if guest.pin is not None:
        for host in hosts:
            if host.id == guest.pin:
                if host.draining:
                    raise FullError(f"host {host.id} is draining")
                if not host.fits(guest):
                    raise FullError(f"host {host.id} has no room for {guest.mem} MiB")
                return host
        raise MissingError(f"no host {guest.pin}")
    # The one loop over every host: kept to plain comparisons (it runs for
    # each create, over all hosts); the score tuple is built only for hosts
    # that could win on free memory alone.
    best: HostLoad | None = None
    best_score: tuple[float, int, str] = (2.0, 0, "")
    roomy = False
    cpu, mem = guest.cpu, guest.mem
    avoiding = bool(guest.avoid_servers or guest.avoid_drives)
    for host in hosts:
        if (
            host.draining
            or host.mem <= 0
            or host.used_mem + mem > host.mem
            or host.used_cpu + cpu > host.cpu * host.cpu_overcommit
        ):
            continue
        roomy = True
        if -(host.mem - host.used_mem) / host.mem > best_score[0]:
            continue  # less free memory than the best so far: cannot win
        if avoiding and _avoided(host, guest):
            continue
        score = host.score()
        if score < best_score:
            best, best_score = host, score
    if best is not None:
        return best
    if roomy:
        raise FullError("every host with room runs a server or drive in avoid:servers/avoid:drives")
    raise FullError(f"no host has {guest.mem} MiB of memory and {guest.cpu} MHz free")


def _avoided(host: HostLoad, guest: Guest) -> bool:
    return _meets(host.servers, guest.avoid_servers) or _meets(host.drives, guest.avoid_drives)


def _meets(have: frozenset[str], avoid: Iterable[str]) -> bool:
    return bool(avoid) and not have.isdisjoint(avoid)
