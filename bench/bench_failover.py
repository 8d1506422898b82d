"""Host death → every guest running elsewhere, on real hosts; and the
failover stress run.

A site of network namespaces (``tests/netns.py``): three hosts running
``overcast host``, etcd in its own namespace, a manager in the root
namespace, one shared drive directory; guests are real QEMUs (TCG) with an
exclusive drive and a NIC each. Every trial hits one host that runs guests
(each in turn) with one fault and times from the fault until every guest it
ran is seen running on another host (its QEMU in that host's cgroup, and
that host's agent listing it); then the host is brought back.

Faults: ``crash`` (SIGKILL of everything on the host), ``stop`` (SIGSTOP of
the agent alone: its watchdog fences), ``partition`` (its link down),
``freeze`` (the cgroup freezer, thawed after TTL + 2 s: a frozen QEMU still
holds its image lock, so the revival waits for the thawed host to fence
itself), or ``mix`` (each in turn).

Checked on every trial, at every sample (every 20 ms): never two running
QEMUs of one guest (a frozen one does not run; it counts again once
thawed); each guest revived exactly once per fault that hit it (its
``server.revive`` events); at the end, no guest's usage records overlap
and the time not billed around each revival is under TTL + margin + 5 s.

The baseline in the same run is the manager's API create of the same
guest (create → running, p50): the floor of any failover is the lease's
TTL plus the drift margin plus one create, and the ratio printed is the
p50 failover time over that floor.

Run: ``.venv/bin/python bench/bench_failover.py [--trials 20] [--fault crash]``;
the stress run is ``--trials 100 --fault mix``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster import Cluster, guest_copies, wait_for
from netns import site

__all__ = ["Figures", "main", "run"]

FAULTS = ("crash", "stop", "partition", "freeze")


@dataclass
class Figures:
    ttl: int
    margin: float
    fault: str
    guests: int
    create_ms: list[float] = field(default_factory=list)
    #: fault → seconds from the fault to every guest running elsewhere.
    revive_s: dict[str, list[float]] = field(default_factory=dict)
    revived: int = 0
    violations: list[str] = field(default_factory=list)
    unbilled_s: list[float] = field(default_factory=list)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _records(text: str) -> list[dict[str, str]]:
    return [
        dict(line.split(" ", 1) for line in block.splitlines() if " " in line)
        for block in text.strip().split("\n\n")
        if block.strip()
    ]


class Bench:
    def __init__(self, cluster: Cluster, figures: Figures) -> None:
        self.cluster = cluster
        self.figures = figures
        self.where: dict[str, int] = {}  # guest → host index running it
        self.faulted: dict[str, int] = {}  # guest → faults that hit it
        self.trials = 0
        self.fault, self.lost = "", 0

    def user(self) -> httpx.Client:
        with self.cluster.admin() as a:
            r = a.post("/users/create", content="name bench\n")
            r.raise_for_status()
            keys = _records(r.text)[0]
        return self.cluster.manager.client(keys["user"], keys["secret"])

    def create(self, http: httpx.Client, n: int) -> str:
        r = http.post("/drives/create", content=f"name d{n}\nsize 16M\n")
        r.raise_for_status()
        drive = _records(r.text)[0]["drive"]
        keys = f"name g{n}\ncpu 200\nmem 48\nblock:0 {drive}\nnic:0:model virtio\n"
        began = time.perf_counter()
        r = http.post("/servers/create", content=keys)
        self.figures.create_ms.append((time.perf_counter() - began) * 1000)
        r.raise_for_status()
        server = _records(r.text)[0]["server"]
        copies = wait_for(lambda: guest_copies(self.cluster.site, server), 5, server)
        assert isinstance(copies, dict)
        self.where[server] = next(iter(copies))
        self.faulted[server] = 0
        return server

    def sample(self) -> dict[str, dict[int, list[int]]]:
        """Every guest's QEMUs by host; a violation if two run at once."""
        seen = {}
        for server in self.where:
            copies = guest_copies(self.cluster.site, server)
            running = {i: p for i, p in copies.items() if not self.cluster.site.frozen(i)}
            if sum(len(p) for p in running.values()) > 1:
                detail = {i: [_state(p) for p in pids] for i, pids in copies.items()}
                self.figures.violations.append(
                    f"{time.time():.3f} trial {self.trials} ({self.fault}, host "
                    f"h{self.lost}): two running copies of {server}: {detail}"
                )
            seen[server] = running
        return seen

    def trial(self, fault: str) -> None:
        site, cluster = self.cluster.site, self.cluster
        # Each host in turn (one that runs guests): every host is hit.
        busy = set(self.where.values())
        order = sorted(cluster.hosts)
        while (lost := order[self.trials % len(order)]) not in busy:
            self.trials += 1
        self.trials += 1
        victims = [s for s, h in self.where.items() if h == lost]
        agent = cluster.hosts[lost].process
        self.fault, self.lost = fault, lost
        began = time.monotonic()
        if fault == "crash":
            site.kill_host(lost)
        elif fault == "stop":
            assert agent is not None
            os.kill(agent.pid, signal.SIGSTOP)
        elif fault == "partition":
            site.link_down(lost)
        else:
            site.freeze(lost)
        thaw_at = began + cluster.ttl + 2.0
        deadline = began + cluster.ttl + cluster.margin + 30
        while True:
            if fault == "freeze" and site.frozen(lost) and time.monotonic() >= thaw_at:
                site.thaw(lost)
            seen = self.sample()
            moved = {
                s: next(iter(seen[s]))
                for s in victims
                if len(seen[s]) == 1 and next(iter(seen[s])) != lost
            }
            if len(moved) == len(victims) and all(
                s in cluster.running_on(h) for s, h in moved.items()
            ):
                break
            if time.monotonic() > deadline:
                self.figures.violations.append(f"{fault}: not revived in 30 s: {seen}")
                break
            time.sleep(0.02)
        took = time.monotonic() - began
        self.figures.revive_s.setdefault(fault, []).append(took)
        for server in victims:
            self.faulted[server] += 1
            if server in moved:
                self.where[server] = moved[server]
        self.figures.revived += len(moved)
        print(
            f"  {fault:9s} host h{lost}: {len(victims)} guest(s) elsewhere in {took:.2f} s",
            flush=True,
        )
        # Bring the host back, empty of guests (a thawed or reconnected one
        # fenced itself; a stopped agent is woken, then restarted).
        if fault == "stop" and agent is not None:
            os.kill(agent.pid, signal.SIGCONT)
        if fault == "partition":
            site.link_up(lost)
        if site.frozen(lost):
            site.thaw(lost)
        site.kill_host(lost)
        cluster.start_host(lost)
        cluster.wait_hosts_ready(60)

    def check_events_and_ledger(self) -> None:
        with self.cluster.admin() as a:
            events = a.get("/events/list", params={"since": 0}, headers=_JSON).json()
            usage = a.get("/billing/list", params={"from": 0}, headers=_JSON).json()
        revives = {s: 0 for s in self.where}
        for event in events:
            if event["type"] == "server.revive" and event["server"] in revives:
                revives[event["server"]] += 1
            elif event["type"] == "server.exit" and event["server"] in revives:
                self.figures.violations.append(f"{event['server']} exited: {event['reason']}")
        for server, count in revives.items():
            if count != self.faulted[server]:
                self.figures.violations.append(
                    f"{server}: {count} revive events for {self.faulted[server]} faults"
                )
        floor = self.cluster.ttl + self.cluster.margin + 5
        for server in self.where:
            spans = sorted(
                (float(u["start"]), float(u["end"])) for u in usage if u["object"] == server
            )
            for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
                if s2 < e1 - 1e-6:
                    self.figures.violations.append(f"{server}: usage overlaps {spans}")
                elif s2 - e1 > 1e-6:
                    self.figures.unbilled_s.append(s2 - e1)
                    if s2 - e1 > floor:
                        self.figures.violations.append(f"{server}: {s2 - e1:.1f} s unbilled")


_JSON = {"accept": "application/json"}


def _state(pid: int) -> str:
    """pid, its state letter and parent: what a violation report needs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return f"{pid}:gone"
    return f"{pid}:{fields[0]}:ppid{fields[1]}"


def run(trials: int, fault: str, guests: int, ttl: int = 3, margin: float = 0.5) -> Figures:
    figures = Figures(ttl, margin, fault, guests)
    with site(3) as s:
        work = Path(tempfile.mkdtemp(prefix="ocbf-", dir="/tmp"))
        cluster = Cluster(s, work, ttl=ttl, margin=margin)
        try:
            cluster.start_manager()
            for i in (1, 2, 3):
                cluster.start_host(i)
            cluster.wait_hosts_ready(60)
            bench = Bench(cluster, figures)
            with bench.user() as http:
                for n in range(guests):
                    bench.create(http, n)
            faults = FAULTS if fault == "mix" else (fault,)
            for n in range(trials):
                bench.trial(faults[n % len(faults)])
            time.sleep(1.0)
            bench.check_events_and_ledger()
        finally:
            cluster.stop()
        if not figures.violations:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")
    return figures


def report(f: Figures) -> None:
    create = statistics.median(f.create_ms) / 1000
    floor = f.ttl + f.margin + create
    print(f"\nlease TTL {f.ttl} s, failover margin {f.margin} s, {f.guests} guests on 3 hosts")
    print(f"baseline: API create → running p50 {create * 1000:.0f} ms (n={len(f.create_ms)})")
    print(f"floor of a failover: TTL + margin + create = {floor:.2f} s")
    for fault, values in f.revive_s.items():
        p50, p99 = _p(values, 0.5), _p(values, 0.99)
        print(
            f"{fault:9s} → every guest running elsewhere: p50 {p50:.2f} s, p99 {p99:.2f} s, "
            f"max {max(values):.2f} s (n={len(values)}); p50/floor {p50 / floor:.2f}"
        )
    if f.unbilled_s:
        print(
            f"unbilled around revivals: p50 {_p(f.unbilled_s, 0.5):.2f} s, "
            f"max {max(f.unbilled_s):.2f} s (n={len(f.unbilled_s)})"
        )
    print(f"guests revived: {f.revived}; invariant violations: {len(f.violations)}")
    for v in f.violations[:20]:
        print("  VIOLATION", v)


def main(argv: list[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--fault", choices=[*FAULTS, "mix"], default="crash")
    parser.add_argument("--guests", type=int, default=6)
    args = parser.parse_args(argv)
    # A SIGTERM (a timeout, a ^C from a wrapper) still tears the site down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    figures = run(args.trials, args.fault, args.guests)
    report(figures)
    return figures


if __name__ == "__main__":
    sys.exit(1 if main().violations else 0)
