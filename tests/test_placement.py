"""Placement (issue 7), a pure function: properties over generated clusters.

Whatever the hosts and the guest, a chosen host has room, is not draining,
runs nothing the guest must avoid, and no other such host is better by the
spread rule; a refusal means no host qualified.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overcast.cluster.placement import Guest, HostLoad, place
from overcast.model.errors import FullError, MissingError

SERVERS = [f"s{i}" for i in range(6)]
DRIVES = [f"d{i}" for i in range(6)]


@st.composite
def hosts(draw: st.DrawFn) -> list[HostLoad]:
    found = []
    for i in range(draw(st.integers(0, 8))):
        mem = draw(st.integers(256, 8192))
        cpu = draw(st.integers(1000, 8000))
        found.append(
            HostLoad(
                id=f"h{i}",
                cpu=cpu,
                mem=mem,
                used_cpu=draw(st.integers(0, cpu * 4)),
                used_mem=draw(st.integers(0, mem)),
                guests=draw(st.integers(0, 20)),
                servers=frozenset(draw(st.lists(st.sampled_from(SERVERS), max_size=3))),
                drives=frozenset(draw(st.lists(st.sampled_from(DRIVES), max_size=3))),
                draining=draw(st.booleans()),
            )
        )
    return found


guests = st.builds(
    Guest,
    cpu=st.integers(100, 4000),
    mem=st.integers(64, 4096),
    avoid_servers=st.frozensets(st.sampled_from(SERVERS), max_size=2),
    avoid_drives=st.frozensets(st.sampled_from(DRIVES), max_size=2),
)


def _eligible(host: HostLoad, guest: Guest) -> bool:
    return (
        not host.draining
        and host.fits(guest)
        and host.servers.isdisjoint(guest.avoid_servers)
        and host.drives.isdisjoint(guest.avoid_drives)
    )


@given(hosts(), guests)
def test_the_choice_qualifies_and_is_the_best(cluster: list[HostLoad], guest: Guest) -> None:
    try:
        chosen = place(guest, cluster)
    except FullError:
        assert not any(_eligible(h, guest) for h in cluster)
        return
    assert _eligible(chosen, guest)
    assert all(chosen.score() <= h.score() for h in cluster if _eligible(h, guest))


def test_spreads_evenly_over_equal_hosts() -> None:
    cluster = {f"h{i}": HostLoad(f"h{i}", cpu=4000, mem=4096) for i in range(4)}
    for _ in range(12):
        chosen = place(Guest(cpu=500, mem=512), list(cluster.values()))
        cluster[chosen.id] = HostLoad(
            chosen.id,
            cpu=chosen.cpu,
            mem=chosen.mem,
            used_cpu=chosen.used_cpu + 500,
            used_mem=chosen.used_mem + 512,
            guests=chosen.guests + 1,
        )
    assert sorted(h.guests for h in cluster.values()) == [3, 3, 3, 3]


def test_pins_and_their_refusals() -> None:
    cluster = [
        HostLoad("a", cpu=4000, mem=1024),
        HostLoad("b", cpu=4000, mem=4096, draining=True),
        HostLoad("c", cpu=4000, mem=1024, used_mem=1000),
    ]
    assert place(Guest(cpu=100, mem=64, pin="a"), cluster).id == "a"
    with pytest.raises(FullError, match="draining"):
        place(Guest(cpu=100, mem=64, pin="b"), cluster)
    with pytest.raises(FullError, match="no room"):
        place(Guest(cpu=100, mem=64, pin="c"), cluster)
    with pytest.raises(MissingError):
        place(Guest(cpu=100, mem=64, pin="zz"), cluster)


def test_avoid_says_why_it_failed() -> None:
    cluster = [HostLoad("a", cpu=4000, mem=4096, servers=frozenset({"s1"}))]
    with pytest.raises(FullError, match="avoid"):
        place(Guest(cpu=100, mem=64, avoid_servers=frozenset({"s1"})), cluster)
    with pytest.raises(FullError, match="no host has"):
        place(Guest(cpu=100, mem=8192), cluster)
