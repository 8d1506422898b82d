"""Hosts die; guests don't (issue 7), on real hosts.

A site of three host namespaces, each running ``overcast host`` (its own
store, its own etcd lease and watchdog), a manager in the root namespace
(no guests of its own), etcd in a namespace of its own and one shared
drive directory. Each test injects one fault into the host that runs a
user's server and checks what the user and the machine see: the server is
revived on another host within seconds with the same drive, NIC and MAC,
the owner's callback hears ``server.revive``, at no sampled instant do two
QEMUs run the guest, and the ledger's rows for it never overlap.

The host hit by a fault is brought back (its agent restarted) before the
next test, so the module shares one site and one manager.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster import Cluster, guest_copies, guest_keys, wait_for
from netns import site
from receiver import Receiver
from test_servers import records

TTL = 3
MARGIN = 0.5
#: Host death → running elsewhere must take no longer than this (s): the
#: TTL, the margin, a start, and slack for a loaded 2-core machine.
REVIVE_WITHIN = TTL + MARGIN + 6
JSON = {"accept": "application/json"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with site(3) as s:
        work = tmp_path_factory.mktemp("cluster")
        # One SQLite file: a standby manager shares the active one's store.
        c = Cluster(s, work, ttl=TTL, margin=MARGIN, store=f"sqlite:///{work / 'manager.db'}")
        try:
            c.start_manager()
            for i in (1, 2, 3):
                c.start_host(i)
            c.wait_hosts_ready(60)
            yield c
        finally:
            c.stop()


@pytest.fixture
def user(cluster: Cluster) -> Iterator[httpx.Client]:
    with cluster.admin() as a:
        r = a.post("/users/create", content="name failover\n")
        r.raise_for_status()
        keys = records(r.text)[0]
    with cluster.manager.client(keys["user"], keys["secret"]) as client:
        yield client


def _create(
    user: httpx.Client, receiver: Receiver, name: str, *, disk: bool = True
) -> tuple[str, dict[str, str]]:
    """A server with a NIC and (``disk``) an exclusive drive of its own."""
    keys = f"name {name}\ncpu 500\nmem 64\nnic:0:model virtio\ncallback:exit {receiver.base}/hook\n"
    if disk:
        r = user.post("/drives/create", content=f"name {name}-disk\nsize 16M\n")
        assert r.status_code == 200, r.text
        keys += f"block:0 {records(r.text)[0]['drive']}\n"
    r = user.post("/servers/create", content=keys)
    assert r.status_code == 200, r.text
    info = records(r.text)[0]
    return info["server"], info


def _holder(cluster: Cluster, server: str) -> int:
    """The one host whose cgroup runs a QEMU of ``server`` (its vCPU may
    need a moment to have executed after the create answered)."""
    wait_for(lambda: guest_copies(cluster.site, server), 5, f"{server} to run")
    copies = guest_copies(cluster.site, server)
    assert len(copies) == 1 and len(next(iter(copies.values()))) == 1, copies
    return next(iter(copies))


def _revived_elsewhere(cluster: Cluster, server: str, lost: int) -> float:
    """Wait until ``server`` runs on a host other than ``lost``, sampling all
    the while that never two QEMUs run it (a frozen one counts) unless one
    of them is on the lost host *and* the lost host is frozen (it cannot
    run). Returns when it was seen running elsewhere (monotonic)."""
    deadline = time.monotonic() + REVIVE_WITHIN
    while True:
        copies = guest_copies(cluster.site, server)
        running = {i: p for i, p in copies.items() if not cluster.site.frozen(i)}
        assert sum(len(p) for p in running.values()) <= 1, f"two running copies: {copies}"
        elsewhere = [i for i in running if i != lost]
        if elsewhere and server in cluster.running_on(elsewhere[0]):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{server} not revived within {REVIVE_WITHIN} s: {copies}")
        time.sleep(0.02)


def _check_revived(
    cluster: Cluster,
    user: httpx.Client,
    receiver: Receiver,
    server: str,
    before: dict[str, str],
    lost: int,
) -> None:
    # The event is committed with the move to the new host: wait for it.
    revives = receiver.wait_acknowledged("/hook", 1, within=15)
    assert [e["type"] for e in revives] == ["server.revive"]
    assert revives[0]["server"]["server"] == server  # type: ignore[index]
    after = records(user.get(f"/servers/{server}/info").text)[0]
    assert after["status"] == "active"
    for key in ("block:0", "nic:0:mac", "nic:0:model", "mem", "cpu"):
        assert after[key] == before[key], key
    # The drive the revived QEMU opened is the user's, on the shared storage.
    (j,) = [i for i in guest_copies(cluster.site, server) if i != lost]
    (pid,) = guest_copies(cluster.site, server)[j]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert str(cluster.shared / before["block:0"]) in cmdline
    assert guest_keys(cluster.site)[server] == f"h{j}"
    _check_ledger(cluster, server)


def _check_ledger(cluster: Cluster, server: str) -> None:
    """The server's usage rows never overlap: no second is billed twice."""
    with cluster.admin() as a:
        r = a.get("/billing/list", params={"from": 0}, headers=JSON)
        assert r.status_code == 200, r.text
        rows = sorted(
            (float(u["start"]), float(u["end"])) for u in r.json() if u["object"] == server
        )
    assert rows, "no usage recorded"
    for (_s1, e1), (s2, _e2) in itertools.pairwise(rows):
        assert s2 >= e1 - 1e-6, rows


def _restore(cluster: Cluster, i: int) -> None:
    if cluster.site.frozen(i):
        cluster.site.thaw(i)
    cluster.site.link_up(i)
    cluster.site.kill_host(i)
    cluster.start_host(i)
    cluster.wait_hosts_ready(60)


def test_a_crashed_host_s_guest_runs_elsewhere_once(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    server, before = _create(user, receiver, "crash")
    lost = _holder(cluster, server)
    started = time.monotonic()
    cluster.site.kill_host(lost)  # the agent, its watchdog and its QEMUs, at once
    try:
        seen = _revived_elsewhere(cluster, server, lost)
        print(f"crash → running elsewhere: {seen - started:.2f} s")
        _check_revived(cluster, user, receiver, server, before, lost)
    finally:
        _restore(cluster, lost)
    # The restarted host reports the end it found; it changes nothing.
    time.sleep(1.0)
    info = records(user.get(f"/servers/{server}/info").text)[0]
    assert info["status"] == "active"
    assert len(guest_copies(cluster.site, server)) == 1


def _gone_within(cluster: Cluster, server: str, host: int, seconds: float) -> float:
    """How long until ``host`` runs no QEMU of ``server`` (fails past ``seconds``)."""
    began = time.monotonic()
    wait_for(
        lambda: host not in guest_copies(cluster.site, server),
        seconds,
        f"host {host} to kill its copy of {server}",
        every=0.005,
    )
    return time.monotonic() - began


def _place_together(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> tuple[int, tuple[str, dict[str, str]], tuple[str, dict[str, str]]]:
    """A server with an exclusive drive and a diskless one on the same host."""
    first = _create(user, receiver, "locked")
    host = _holder(cluster, first[0])
    with cluster.admin() as a:  # pin the second beside the first (admins may)
        keys = (
            f"name free\ncpu 500\nmem 64\nnic:0:model virtio\n"
            f"callback:exit {receiver.base}/hook\nhost {cluster.host_id(host)}\n"
        )
        r = a.post("/servers/create", content=keys)
        assert r.status_code == 200, r.text
        info = records(r.text)[0]
    assert _holder(cluster, info["server"]) == host
    return host, first, (info["server"], info)


def test_a_frozen_host_is_revived_around_and_kills_its_copies_on_thaw(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    """Frozen past the TTL: its diskless guest is revived elsewhere at once;
    the one whose exclusive drive the frozen QEMU still holds waits (QEMU's
    image lock, the second guard, refuses a second writer) and is revived
    once the thawed host has fenced itself."""
    lost, (locked, _info), (free, free_info) = _place_together(cluster, user, receiver)
    cluster.site.freeze(lost)
    try:
        _revived_elsewhere(cluster, free, lost)
        time.sleep(1.0)  # the locked one cannot start while its image is held
        assert set(guest_copies(cluster.site, locked)) == {lost}
        with cluster.admin() as a:
            stranded = records(a.get("/hosts/stranded").text)
        assert locked in {s.get("server") for s in stranded}, stranded
        cluster.site.thaw(lost)
        # The thawed host sees its lease passed and kills every guest at once.
        for server in (free, locked):
            took = _gone_within(cluster, server, lost, 2.0)
            print(f"thawed host killed {server}'s copy in {took * 1000:.0f} ms")
        _revived_elsewhere(cluster, locked, lost)
        for server in (free, locked):
            assert len(guest_copies(cluster.site, server)) == 1
        with cluster.admin() as a:  # the admin's server
            after = records(a.get(f"/servers/{free}/info").text)[0]
        assert after["nic:0:mac"] == free_info["nic:0:mac"]
        _check_ledger(cluster, free)
        _check_ledger(cluster, locked)
    finally:
        _restore(cluster, lost)


def test_a_hung_agent_is_fenced_by_its_watchdog(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    """SIGSTOP the agent alone: its watchdog kills its guests before the
    TTL ends, so the revival never meets a running copy."""
    server, before = _create(user, receiver, "hung")
    lost = _holder(cluster, server)
    agent = cluster.hosts[lost].process
    assert agent is not None
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        _revived_elsewhere(cluster, server, lost)
        _check_revived(cluster, user, receiver, server, before, lost)
        assert lost not in guest_copies(cluster.site, server)
        os.kill(agent.pid, signal.SIGCONT)
        time.sleep(1.5)  # it wakes, fences (nothing left) and reports: ignored
        assert records(user.get(f"/servers/{server}/info").text)[0]["status"] == "active"
        assert len(guest_copies(cluster.site, server)) == 1
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        _restore(cluster, lost)


def test_a_partitioned_host_fences_itself_and_others_revive(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    server, before = _create(user, receiver, "cut")
    lost = _holder(cluster, server)
    cluster.site.link_down(lost)
    try:
        _revived_elsewhere(cluster, server, lost)
        _check_revived(cluster, user, receiver, server, before, lost)
        cluster.site.link_up(lost)
        # It rejoins with a new lease; what it reports now changes nothing.
        cluster.wait_hosts_ready(30)
        time.sleep(1.0)
        assert records(user.get(f"/servers/{server}/info").text)[0]["status"] == "active"
        assert len(guest_copies(cluster.site, server)) == 1
    finally:
        _restore(cluster, lost)


def test_a_manager_outage_fences_nothing_and_a_restart_revives_nothing(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    server, _info = _create(user, receiver, "calm", disk=False)
    _holder(cluster, server)
    before = guest_copies(cluster.site, server)
    cluster.kill_manager()
    time.sleep(float(os.environ.get("OVERCAST_TEST_OUTAGE", str(3 * TTL))))
    assert guest_copies(cluster.site, server) == before  # the same QEMU, still there
    cluster.restart_manager()
    time.sleep(2 * MARGIN + 1.5)
    assert guest_copies(cluster.site, server) == before
    assert receiver.acknowledged("/hook") == []  # neither an exit nor a revive


def test_a_manager_restarted_mid_failover_finishes_it(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    server, before = _create(user, receiver, "resumed")
    lost = _holder(cluster, server)
    cluster.kill_manager()
    cluster.site.kill_host(lost)
    try:
        time.sleep(TTL + 1)  # the lease ends while no manager runs
        assert guest_copies(cluster.site, server) == {}
        cluster.restart_manager()
        _revived_elsewhere(cluster, server, lost)
        _check_revived(cluster, user, receiver, server, before, lost)
    finally:
        _restore(cluster, lost)


def test_a_standby_manager_takes_over(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    standby = cluster.start_manager(1)
    try:
        server, _before = _create(user, receiver, "standby")
        lost = _holder(cluster, server)
        cluster.kill_manager(0)
        cluster.site.kill_host(lost)
        try:
            _revived_elsewhere(cluster, server, lost)
            with httpx.Client(base_url=standby.url, auth=user.auth, timeout=10) as same_user:
                r = same_user.get(f"/servers/{server}/info")
            assert r.status_code == 200, r.text
            assert records(r.text)[0]["status"] == "active"
        finally:
            cluster.restart_manager(0)
            _restore(cluster, lost)
    finally:
        stop_standby = cluster.managers.pop(1)
        stop_standby.process.send_signal(signal.SIGTERM)
        stop_standby.process.wait(10)


def test_placement_avoids_pins_and_refuses_privileged_keys_to_users(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    first, _ = _create(user, receiver, "first", disk=False)
    here = _holder(cluster, first)
    keys = f"name apart\ncpu 500\nmem 64\navoid:servers {first}\n"
    r = user.post("/servers/create", content=keys)
    assert r.status_code == 200, r.text
    apart = records(r.text)[0]["server"]
    assert _holder(cluster, apart) != here

    with cluster.admin() as a:
        pinned = f"name pinned\ncpu 500\nmem 64\nhost {cluster.host_id(2)}\n"
        r = a.post("/servers/create", content=pinned)
        assert r.status_code == 200, r.text
        assert _holder(cluster, records(r.text)[0]["server"]) == 2
        r = a.post("/servers/create", content="name nowhere\ncpu 500\nmem 64\nhost nosuch\n")
        assert r.status_code == 404, r.text
        r = a.get("/hosts/info", headers=JSON)
        by_id = {h["host"]: h for h in r.json()}
        assert {"h1", "h2", "h3"} <= set(by_id)  # hosts registered themselves by their id
        assert all("@" not in h.get("url", "") for h in by_id.values())  # no credentials shown

    before = user.get("/servers/list").text
    for bad in (
        f"name x\ncpu 500\nmem 64\nhost {cluster.host_id(1)}\n",
        f"name x\ncpu 500\nmem 64\nshared {first}\n",
    ):
        r = user.post("/servers/create", content=bad)
        assert r.status_code == 400, r.text
        assert r.headers["x-elastic-error"].startswith("usage")
    assert user.get("/servers/list").text == before
    # The hosts' privileged routes are the manager's, not users'.
    with httpx.Client(base_url=cluster.hosts[1].url, auth=user.auth, timeout=5) as h:
        assert h.get("/guests/list").status_code == 401  # not a user there at all


def test_stop_and_restart_of_a_server_on_a_remote_host(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    """The ordinary life of a server on a host: a stop ends it once (the
    manager's own report and the host's callback agree on one exit), a
    persistent one starts again on whichever host placement picks."""
    server, _info = _create(user, receiver, "plain", disk=False)
    host = _holder(cluster, server)
    r = user.post(f"/servers/{server}/stop")
    assert r.status_code == 204, r.text
    assert user.get(f"/servers/{server}/info").status_code == 404
    assert server not in cluster.running_on(host)
    assert guest_copies(cluster.site, server) == {}
    exits = receiver.wait_acknowledged("/hook", 1)
    assert [(e["type"], e["reason"]) for e in exits] == [("server.exit", "killed")]

    keys = f"name kept\ncpu 500\nmem 64\npersistent true\ncallback:exit {receiver.base}/kept\n"
    r = user.post("/servers/create", content=keys)
    assert r.status_code == 200, r.text
    kept = records(r.text)[0]["server"]
    _holder(cluster, kept)
    assert user.post(f"/servers/{kept}/stop").status_code == 204
    assert records(user.get(f"/servers/{kept}/info").text)[0]["status"] == "stopped"
    assert guest_copies(cluster.site, kept) == {}
    assert user.post(f"/servers/{kept}/start").status_code == 200
    _holder(cluster, kept)
    assert records(user.get(f"/servers/{kept}/info").text)[0]["status"] == "active"
    assert user.post(f"/servers/{kept}/suspend").status_code == 200
    assert records(user.get(f"/servers/{kept}/info").text)[0]["status"] == "paused"
    assert user.post(f"/servers/{kept}/resume").status_code == 200
    assert user.post(f"/servers/{kept}/destroy").status_code == 204
    assert guest_copies(cluster.site, kept) == {}
    time.sleep(1.0)  # the host's own callbacks arrive: nothing more happens
    assert len(receiver.acknowledged("/hook")) == 1
    assert [e["type"] for e in receiver.acknowledged("/kept")] == ["server.exit"] * 2


def test_a_guest_no_host_has_room_for_waits_and_is_revived_when_room_comes(
    cluster: Cluster, user: httpx.Client, receiver: Receiver
) -> None:
    server, before = _create(user, receiver, "roomless")
    lost = _holder(cluster, server)
    others = [i for i in cluster.hosts if i != lost]
    with cluster.admin() as a:
        sizes = {}
        for i in others:  # no room left anywhere else
            info = records(a.get(f"/hosts/{cluster.host_id(i)}/info").text)[0]
            sizes[i] = info["mem"]
            r = a.post(f"/hosts/{cluster.host_id(i)}/set", content="mem 16\n")
            assert r.status_code == 200, r.text
        try:
            cluster.site.kill_host(lost)
            stranded = wait_for(
                lambda: [
                    s for s in records(a.get("/hosts/stranded").text) if s.get("server") == server
                ],
                TTL + MARGIN + 10,
                "the server to be reported stranded",
            )
            assert "MiB" in stranded[0]["reason"], stranded  # type: ignore[index]
            assert guest_copies(cluster.site, server) == {}
            # Never dropped: it is still the user's, and still waits.
            assert records(user.get(f"/servers/{server}/info").text)[0]["status"] == "active"
        finally:
            for i in others:
                a.post(f"/hosts/{cluster.host_id(i)}/set", content=f"mem {sizes[i]}\n")
        try:
            _revived_elsewhere(cluster, server, lost)
            _check_revived(cluster, user, receiver, server, before, lost)
            assert a.get("/hosts/stranded").text.strip() == ""
        finally:
            _restore(cluster, lost)
