"""Host leases and self-fencing on a real etcd and real QEMU guests (issue 7).

The promise under test: a host kills its own guests before its etcd lease
can end, so that a guest revived elsewhere once its key has vanished never
runs twice. Faults: etcd killed (a host cut off from the quorum), the
lease holder stopped (a hung agent: the watchdog process alone fences),
the lease holder frozen past its TTL and thawed (it fences at once, before
trying anything), the lease revoked under the host (it fences and rejoins
empty), the lease record removed or garbled under the watchdog.

Guests are in-process :class:`HostAgent` guests without drives (they start
in tens of milliseconds); where the lease must be held by a process that is
stopped, this file runs itself as that process (``python test_fencing.py
URL DATA HOST SERVER...``). A test that kills etcd gets a private one.
TTL 3 s, margin 0.75 s: the host may run guests until 2.25 s after its
last renewal was sent, renews every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from etcd import running_etcd
from overcast.host.agent import GuestEnd, HostAgent
from overcast.host.lease import HostLease, guest_key, guest_killer, host_key
from overcast.host.watchdog import (
    LEASE_FILE,
    RUN_DIR,
    Clocks,
    Validity,
    read_validity,
    write_validity,
)
from overcast.hypervisor.qemu import QemuDriver
from overcast.hypervisor.spec import Accel, GuestSpec
from overcast.model.errors import OvercastError
from overcast.store.etcd import Etcd, LeaseLost
from qemus import alive, process_end, qemus_in, scratch_dir

TTL = 3
MARGIN = 0.75
PYTHON = sys.executable


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def work() -> Iterator[Path]:
    """A short data directory; kills any QEMU left in it."""
    with scratch_dir("ocf-") as path:
        yield path


class Ends:
    def __init__(self) -> None:
        self.all: list[GuestEnd] = []

    async def __call__(self, end: GuestEnd) -> None:
        self.all.append(end)


class Guests:
    """Starts guests without drives in ``run`` through a real host agent."""

    def __init__(self, run: Path, accel: Accel) -> None:
        self.ends = Ends()
        self.agent = HostAgent(
            run,
            QemuDriver(accel, timeout=15.0),
            self.ends,
            networking=False,
            ifprefix=f"f{secrets.token_hex(2)}",
        )

    async def start(self, server: str | None = None) -> tuple[str, int]:
        spec = GuestSpec(
            uuid=server or str(uuid.uuid4()), name="fencing", smp=1, mem_mib=64, cpu_mhz=0
        )
        started = await self.agent.start(spec, [])
        return spec.uuid, started.info.pid


@pytest.fixture
async def guests(work: Path, accel: Accel) -> AsyncIterator[Guests]:
    made = Guests(work / RUN_DIR, accel)
    try:
        yield made
    finally:
        await made.agent.close()


@pytest.fixture
async def etcd(etcd_url: str) -> AsyncIterator[Etcd]:
    client = Etcd([etcd_url])
    try:
        yield client
    finally:
        await client.close()


class Kills:
    """A ``fence`` that only counts its calls (for tests without guests)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


def _host() -> str:
    return f"host-{secrets.token_hex(4)}"


async def _eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float) -> float:
    """Wait until ``check`` holds; the wall-clock time it was first seen to."""
    deadline = time.monotonic() + seconds
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            break
        assert time.monotonic() < deadline, f"not true after {seconds} s"
        await asyncio.sleep(0.02)
    return time.time()


def _etcd_pid(url: str) -> int:
    """The etcd process serving ``url``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"etcd") and url.encode() in argv:
                return int(proc.name)
    raise AssertionError(f"no etcd serves {url}")


async def _next_renewal(data: Path, seconds: float = 3.0) -> float:
    """Wait for the lease record to show a new renewal; its ``renewed``."""
    first = read_validity(data / LEASE_FILE)
    assert first is not None

    async def renewed() -> bool:
        now = read_validity(data / LEASE_FILE)
        return now is not None and now.renewed != first.renewed

    await _eventually(renewed, seconds)
    now = read_validity(data / LEASE_FILE)
    assert now is not None
    # Past the rest of that renewal's step: the holder is asleep until the next.
    await asyncio.sleep(0.1)
    return now.renewed


class Holder:
    """This file run as a process that holds the lease of ``data`` and has
    claimed ``servers``; its log (DEBUG) goes to ``data/holder.log``."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, lease: int) -> None:
        self.proc = proc
        self.log = log
        self.lease = lease

    @classmethod
    async def start(cls, url: str, data: Path, host: str, servers: list[str]) -> Holder:
        log = data / "holder.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                PYTHON, __file__, url, str(data), host, *servers,
                stdout=asyncio.subprocess.PIPE, stderr=out,
            )  # fmt: skip
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(15):
                line = await proc.stdout.readline()
            return cls(proc, log, int(json.loads(line)["lease"]))
        except BaseException:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"the lease holder did not start:\n{log.read_text()}") from None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _hold(url: str, data: Path, host: str, servers: list[str]) -> None:
    """The lease holder's life: join, claim, say so, renew until killed."""
    logging.basicConfig(
        level=logging.DEBUG,
        format="%(created).3f %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    etcd = Etcd([url])
    lease = HostLease(etcd, host, data, guest_killer(data / RUN_DIR), ttl=TTL, margin=MARGIN)
    await lease.start()
    for server in servers:
        assert await lease.claim_guest(server), server
    print(json.dumps({"lease": lease.lease}), flush=True)
    await asyncio.Event().wait()


# -- tests ---------------------------------------------------------------------


async def test_the_lease_renews_holds_keys_and_one_claim_wins(etcd: Etcd, work: Path) -> None:
    ha, hb = _host(), _host()
    kills_a, kills_b = Kills(), Kills()
    a = HostLease(etcd, ha, work / "a", kills_a, advertise="http://a", ttl=TTL, margin=MARGIN)
    b = HostLease(etcd, hb, work / "b", kills_b, advertise="http://b", ttl=TTL, margin=MARGIN)
    await asyncio.gather(a.start(), b.start())
    # Joining without a lease to resume sweeps whatever runs here first.
    assert (kills_a.calls, kills_b.calls) == (1, 1)
    lease = a.lease
    assert lease is not None and a.valid()
    kv = await etcd.get(host_key(ha))
    assert kv is not None and (kv.value, kv.lease) == ("http://a", lease)
    record = read_validity(work / "a" / LEASE_FILE)
    assert record is not None and (record.host, record.lease) == (ha, lease)
    assert record.valid_until == pytest.approx(record.renewed + TTL - MARGIN)
    assert record.valid_until == a.valid_until and not record.passed(Clocks.now())

    server = str(uuid.uuid4())
    won = await asyncio.gather(a.claim_guest(server), b.claim_guest(server))
    assert sorted(won) == [False, True]
    winner, loser = (a, b) if won[0] else (b, a)
    kv = await etcd.get(guest_key(server))
    assert kv is not None and (kv.value, kv.lease) == (winner.host_id, winner.lease)
    assert await winner.claim_guest(server)  # ours already: still ours
    assert not await loser.claim_guest(server)
    assert (winner.guests, loser.guests) == (frozenset({server}), frozenset())

    other = str(uuid.uuid4())
    assert await a.claim_guest(other)
    assert await a.release_guest(other)
    assert await etcd.get(guest_key(other)) is None
    assert not await a.release_guest(other)

    # Renewed: everything outlives the TTL.
    first = a.renewed
    await asyncio.sleep(TTL + 0.5)
    assert a.lease == lease and a.renewed > first + TTL - 1.5
    assert await etcd.get(guest_key(server)) is not None
    assert await etcd.get(host_key(ha)) is not None
    assert (a.fences, b.fences) == ([], [])

    # A new run of the winner resumes its lease and its guests; nothing is fenced.
    kills = kills_a if winner is a else kills_b
    calls = kills.calls
    await winner.close()
    again = HostLease(etcd, winner.host_id, winner.data, kills, ttl=TTL, margin=MARGIN)
    await again.start()
    assert (again.lease, again.guests, kills.calls) == (winner.lease, frozenset({server}), calls)

    # Leaving kills the guests and revokes: the keys go at once.
    await again.leave()
    assert kills.calls == calls + 1 and again.lease is None and not again.valid()
    assert await etcd.get(guest_key(server)) is None
    assert await etcd.get(host_key(winner.host_id)) is None
    record = read_validity(winner.data / LEASE_FILE)
    assert record is not None and record.passed(Clocks.now())
    with pytest.raises(LeaseLost):
        await again.claim_guest(server)
    await loser.leave()


async def test_etcd_killed_guests_die_before_the_ttl(work: Path, guests: Guests) -> None:
    with running_etcd() as url:
        etcd = Etcd([url])
        lease = HostLease(etcd, _host(), work, guest_killer(work / RUN_DIR), ttl=TTL, margin=MARGIN)
        try:
            await lease.start()
            pids = []
            lease_servers = {str(uuid.uuid4()) for _ in range(2)}
            for server in lease_servers:
                assert await lease.claim_guest(server)
                pids.append((await guests.start(server))[1])
            assert lease.guests == lease_servers
            ends = [process_end(pid) for pid in pids]
            await _next_renewal(work)
            os.kill(_etcd_pid(url), signal.SIGKILL)
            killed = time.time()
            async with asyncio.timeout(TTL + 1):
                ended = await asyncio.gather(*ends)
            (fence,) = lease.fences
            since = [end - fence.renewed for end in ended]
            print(
                f"\netcd killed {killed - fence.renewed:.3f} s after the last renewal; "
                f"guests dead {', '.join(f'{s:.3f}' for s in since)} s after it "
                f"(TTL {TTL} s, margin {MARGIN} s); fence() took {fence.done - fence.began:.3f} s"
            )
            assert "no renewal confirmed in time" in fence.reason
            # Killed at the validity point, not before, and well before the TTL.
            assert all(TTL - MARGIN - 0.01 <= s < TTL for s in since), since
            assert qemus_in(work) == []
            assert not lease.valid() and lease.lease is None
            record = read_validity(work / LEASE_FILE)
            assert record is not None and record.passed(Clocks.now())
            with pytest.raises(LeaseLost):
                await lease.claim_guest(str(uuid.uuid4()))
            # The agent saw each end through its own watcher, and reported it.
            await _eventually(lambda: len(guests.ends.all) == 2, 2)
            assert guests.agent.running() == set()
            assert {end.server for end in guests.ends.all} == lease_servers
        finally:
            await lease.close()
            await etcd.close()


async def test_a_revoked_lease_fences_at_once_and_rejoins_empty(
    etcd: Etcd, work: Path, guests: Guests
) -> None:
    host = _host()
    lease = HostLease(etcd, host, work, guest_killer(work / RUN_DIR), ttl=TTL, margin=MARGIN)
    await lease.start()
    try:
        server = str(uuid.uuid4())
        assert await lease.claim_guest(server)
        assert lease.holds(server)
        _, pid = await guests.start(server)
        end = process_end(pid)
        old = lease.lease
        assert old is not None
        await etcd.revoke(old)  # e.g. an admin, or etcd's clock: the keys are gone now
        revoked = time.time()
        async with asyncio.timeout(2):
            ended = await end
        (fence,) = lease.fences
        print(f"\nlease revoked -> guest dead in {ended - revoked:.3f} s")
        assert "expired" in fence.reason and ended < fence.renewed + TTL - MARGIN

        async def rejoined() -> bool:
            kv = await etcd.get(host_key(host))
            return kv is not None and kv.lease not in (0, old) and kv.lease == lease.lease

        await _eventually(rejoined, 3)
        assert lease.valid() and lease.guests == frozenset()
        # Valid again, yet the fenced guest's right is gone: its end, seen
        # only now, is a fence's (a manager revives it; it did not exit).
        assert not lease.holds(server)
        assert await etcd.get(guest_key(server)) is None
        # Rejoined empty, it may run guests again.
        assert await lease.claim_guest(server)
    finally:
        await lease.leave()


async def test_the_watchdog_alone_fences_a_stopped_lease_holder(
    etcd_url: str, etcd: Etcd, work: Path, guests: Guests, accel: Accel
) -> None:
    host = _host()
    servers = [str(uuid.uuid4()) for _ in range(2)]
    holder = await Holder.start(etcd_url, work, host, servers)
    log = work / "watchdog.log"
    with log.open("wb") as out:
        watchdog = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "overcast.host.watchdog", "--data", str(work), stderr=out
        )
    others = Guests(work / "other" / RUN_DIR, accel)
    decoy = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        pids = [(await guests.start(server))[1] for server in servers]
        # Pids in pidfiles of this data directory that are not its QEMUs: a
        # QEMU of another directory, a process that is no QEMU.
        _, foreign = await others.start()
        for pid in (foreign, decoy.pid):
            fake = work / RUN_DIR / str(uuid.uuid4())
            fake.mkdir()
            (fake / "qemu.pid").write_text(f"{pid}\n")
        ends = [process_end(pid) for pid in pids]

        await _next_renewal(work)
        holder.proc.send_signal(signal.SIGSTOP)  # a hung agent: no renewal, no fence() from it
        record = read_validity(work / LEASE_FILE)
        assert record is not None and record.lease == holder.lease
        async with asyncio.timeout(TTL + 1):
            ended = await asyncio.gather(*ends)
        since = [end - record.renewed for end in ended]

        async def keys_gone() -> bool:
            keys = [host_key(host), *(guest_key(s) for s in servers)]
            return all([await etcd.get(key) is None for key in keys])

        gone = await _eventually(keys_gone, TTL + 3)
        print(
            f"\nwatchdog: guests dead {', '.join(f'{s:.3f}' for s in since)} s after the last "
            f"renewal (TTL {TTL} s, margin {MARGIN} s); keys gone {gone - max(ended):.3f} s later"
        )
        assert all(TTL - MARGIN - 0.01 <= s < TTL for s in since), since
        assert gone > max(ended)  # dead before anyone could take their keys
        assert alive(foreign) and alive(decoy.pid)
        text = log.read_text()
        assert f"lease {holder.lease:x} of host '{host}' has ended" in text, text
        assert all(f"killed QEMU pid {pid} " in text for pid in pids), text

        # While the record says "ended", a QEMU that appears is killed too
        # (before or after its start returns).
        with contextlib.suppress(OvercastError):
            _, late = await guests.start()
            async with asyncio.timeout(1):
                await process_end(late)

        def killed_late() -> bool:
            return log.read_text().count("killed QEMU pid") > len(pids)

        await _eventually(killed_late, 1)
        assert qemus_in(work / RUN_DIR) == [] and watchdog.returncode is None
    finally:
        await holder.kill()
        watchdog.terminate()
        await watchdog.wait()
        decoy.kill()
        await decoy.wait()
        await others.agent.close()


async def test_the_watchdog_fences_when_the_record_goes_missing_or_garbled(
    work: Path, guests: Guests
) -> None:
    log = work / "watchdog.log"
    with log.open("wb") as out:
        watchdog = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "overcast.host.watchdog", "--data", str(work), stderr=out
        )
    try:
        await _eventually(lambda: "watching" in log.read_text(), 10)  # it holds the lock
        second_watchdog = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "overcast.host.watchdog", "--data", str(work),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(10):
                _, refusal = await second_watchdog.communicate()
        finally:
            if second_watchdog.returncode is None:
                second_watchdog.kill()
                await second_watchdog.wait()
        assert second_watchdog.returncode == 1 and b"another watchdog" in refusal
        _, first = await guests.start()
        await asyncio.sleep(0.4)
        assert alive(first)  # no record yet: a host outside any cluster is left alone
        now = Clocks.now()
        good = Validity("h", 1, now.wall + 600, now.boot + 600, now.boot_id, now.wall)
        write_validity(work / LEASE_FILE, good)
        await asyncio.sleep(0.4)
        assert alive(first)
        (work / LEASE_FILE).write_text("{garbled")
        async with asyncio.timeout(1):
            await process_end(first)
        write_validity(work / LEASE_FILE, good)
        await asyncio.sleep(0.4)
        _, second = await guests.start()
        await asyncio.sleep(0.4)
        assert alive(second)
        (work / LEASE_FILE).unlink()
        async with asyncio.timeout(1):
            await process_end(second)
        text = log.read_text()
        assert text.count("the lease record is missing or garbled") == 2, text
        assert "the lease is valid again" in text, text
    finally:
        watchdog.terminate()
        await watchdog.wait()


async def test_a_frozen_lease_holder_fences_at_once_on_waking(
    etcd_url: str, etcd: Etcd, work: Path, guests: Guests
) -> None:
    host = _host()
    server = str(uuid.uuid4())
    holder = await Holder.start(etcd_url, work, host, [server])
    try:
        _, pid = await guests.start(server)
        end = process_end(pid)
        renewed = await _next_renewal(work)
        holder.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(TTL + 1)  # frozen past the TTL: the lease has ended at etcd
        assert alive(pid) and await etcd.get(guest_key(server)) is None
        holder.proc.send_signal(signal.SIGCONT)
        thawed = time.time()
        async with asyncio.timeout(2):
            ended = await end
        print(f"\nthawed -> guest dead in {ended - thawed:.3f} s")
        assert ended - thawed < 0.5

        # Its first act on waking was the fence: no renewal was tried first.
        lines = holder.log.read_text().splitlines()
        last = max(i for i, line in enumerate(lines) if "renewed lease" in line)
        assert float(lines[last].split()[0]) >= renewed  # the renewal we waited for
        fence = next(i for i, line in enumerate(lines) if "fencing host" in line)
        assert last < fence, lines
        assert "no renewal confirmed in time" in lines[fence], lines[fence]
        assert float(lines[fence].split()[0]) >= thawed - 0.05
        assert not any("renewing lease" in line for line in lines[last:fence]), lines

        async def rejoined() -> bool:
            kv = await etcd.get(host_key(host))
            return kv is not None and kv.lease not in (0, holder.lease)

        await _eventually(rejoined, 3)  # a fenced host rejoins, empty
        assert await etcd.get(guest_key(server)) is None
    finally:
        await holder.kill()


if __name__ == "__main__":
    asyncio.run(_hold(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]))
