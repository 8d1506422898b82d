"""Placement decisions per second: 1,000 simulated hosts, 10,000 guests.

Simulated hosts: no hypervisor and no store, only the capacities and
loads that :func:`overcast.cluster.placement.place` decides on (the issue
allows a fake driver; this goes further and leaves the driver out, since
placement never calls one). Guests arrive one by one with random sizes and,
for a quarter of them, ``avoid:servers`` naming three earlier guests; each
decision is applied to the chosen host before the next.

The baseline in the same run is the floor of any scan-based placement: one
``min()`` over the same hosts with a precomputed key, per decision. The
ratio says what the rules (room, draining, avoid sets, spread score) cost
on top of looking at every host once.

Run: ``.venv/bin/python bench/bench_placement.py [--small]``.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from dataclasses import dataclass

from overcast.cluster.placement import Guest, HostLoad, place

__all__ = ["Figures", "main", "run"]


@dataclass(frozen=True)
class Figures:
    hosts: int
    guests: int
    placed: int
    refused: int
    place_s: float
    floor_s: float

    @property
    def rate(self) -> float:
        return self.guests / self.place_s

    @property
    def floor_rate(self) -> float:
        return self.guests / self.floor_s


def _cluster(n: int, rng: random.Random) -> list[HostLoad]:
    return [
        HostLoad(
            f"host-{i:04d}",
            cpu=rng.choice([16, 32, 64]) * 2000,
            mem=rng.choice([64, 128, 256]) * 1024,
        )
        for i in range(n)
    ]


def _guests(n: int, rng: random.Random) -> list[Guest]:
    made = []
    for i in range(n):
        avoid = (
            frozenset(f"g{rng.randrange(i)}" for _ in range(3))
            if i and rng.random() < 0.25
            else frozenset()
        )
        made.append(
            Guest(
                cpu=rng.choice([500, 1000, 2000, 4000]),
                mem=rng.choice([512, 1024, 2048, 4096]),
                avoid_servers=avoid,
            )
        )
    return made


def run(*, hosts: int = 1000, guests: int = 10_000, seed: int = 7) -> Figures:
    rng = random.Random(seed)
    cluster = _cluster(hosts, rng)
    arrivals = _guests(guests, rng)
    index = {h.id: i for i, h in enumerate(cluster)}

    placed = refused = 0
    spent = 0.0
    for n, guest in enumerate(arrivals):
        began = time.perf_counter()
        try:
            host = place(guest, cluster)
        except Exception:
            spent += time.perf_counter() - began
            refused += 1
            continue
        spent += time.perf_counter() - began
        placed += 1
        cluster[index[host.id]] = dataclasses.replace(
            host,
            used_cpu=host.used_cpu + guest.cpu,
            used_mem=host.used_mem + guest.mem,
            guests=host.guests + 1,
            servers=host.servers | {f"g{n}"},
        )

    keys = [h.score() for h in cluster]
    began = time.perf_counter()
    for _ in arrivals:
        min(range(len(keys)), key=keys.__getitem__)
    floor = time.perf_counter() - began
    return Figures(hosts, guests, placed, refused, spent, floor)


def report(f: Figures) -> None:
    print(f"bench_placement: {f.guests} guests onto {f.hosts} simulated hosts")
    print("  (pure placement: no hypervisor, no store)")
    print(f"  placed {f.placed}, refused {f.refused} (no room or nowhere to go for avoid:servers)")
    print(f"  {'measure':<38}{'seconds':>10}{'decisions/s':>14}")
    print(f"  {'place(): rules + spread over all hosts':<38}{f.place_s:>10.2f}{f.rate:>14.0f}")
    print(f"  {'floor: one min() over the hosts':<38}{f.floor_s:>10.2f}{f.floor_rate:>14.0f}")
    print(f"  place / floor: {f.place_s / f.floor_s:.2f} x the time of a bare scan")


def main(small: bool = False) -> Figures:
    figures = run(hosts=50, guests=300) if small else run()
    report(figures)
    return figures


if __name__ == "__main__":
    main(small="--small" in sys.argv[1:])
