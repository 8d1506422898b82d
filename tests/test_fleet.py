"""The manager's fleet (issue 7): where a host reports ends, what of its URL
is shown, and placement over registered hosts in the store (liveness,
revivals in flight, pins), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid as _uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overcast.cluster.fleet import Fleet, exits_url
from overcast.host.agent import GuestEnd
from overcast.model.errors import FailedError, FullError, MissingError
from overcast.model.host import Host, without_credentials
from overcast.model.server import ServerSpec, parse_server_spec
from overcast.store import Store
from overcast.store import hosts as host_rows


async def _nobody(_host: str, _end: GuestEnd) -> None:
    return None


def test_exits_url_carries_the_host_s_credentials_and_id() -> None:
    url = exits_url("http://10.0.0.1:8080", "http://u:k%40y@10.0.0.11:8080", "rack1-h1")
    assert url == "http://u:k%40y@10.0.0.1:8080/hosts/exits?host=rack1-h1"
    assert exits_url("https://m.example/api/", "http://10.0.0.11", "h") == (
        "https://m.example/api/hosts/exits?host=h"
    )


@given(
    st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9%]{1,16}", fullmatch=True),
    st.from_regex(r"10\.[0-9]\.[0-9]\.[0-9]:[1-9][0-9]{0,3}", fullmatch=True),
)
def test_credentials_never_survive_without_credentials(user: str, key: str, where: str) -> None:
    shown = without_credentials(f"http://{user}:{key}@{where}/x")
    assert shown == f"http://{where}/x"


def _spec(**extra: str) -> ServerSpec:
    return parse_server_spec({"name": "g", "cpu": "1000", "mem": "512", **extra})


async def _fleet(store: Store, *hosts: Host) -> Fleet:
    async with store.write() as tx:
        for host in hosts:
            await host_rows.insert_host(tx, host)
    return Fleet(store, None, "http://127.0.0.1:1", _nobody)


async def test_placement_skips_dead_hosts_and_counts_guests_on_their_way(store: Store) -> None:
    a = Host("a", "a", "http://127.0.0.1:11", 4000, 4096)
    b = Host("b", "b", "http://127.0.0.1:12", 4000, 4096)
    c = Host("c", "c", "http://127.0.0.1:13", 4000, 4096)
    fleet = await _fleet(store, a, b, c)
    spec = _spec()
    async with store.read() as tx:
        first = await fleet.place(tx, spec)
    assert first == "a"  # equal hosts: the id decides, so the choice is stable
    fleet.alive = lambda h: h.id != "a"
    async with store.read() as tx:
        assert await fleet.place(tx, spec) == "b"
    fleet.expect("b", spec)
    async with store.read() as tx:
        assert await fleet.place(tx, spec) == "c"
        assert await fleet.place(tx, spec, exclude={"c"}) == "b"
    fleet.expect("b", spec, -1)
    assert fleet.incoming == {}
    async with store.read() as tx:
        pinned = _spec(host="a")
        with pytest.raises(FailedError, match="cannot take guests"):
            await fleet.place(tx, pinned)
        with pytest.raises(MissingError):
            await fleet.place(tx, _spec(host="nosuch"))
        with pytest.raises(FullError):
            await fleet.place(tx, _spec(mem="8192"))
    with pytest.raises(FailedError, match="runs no guests"):
        await fleet.client("local")
    with pytest.raises(FailedError, match="not registered"):
        await fleet.client(str(_uuid.uuid4()))
    assert (await fleet.client("a")) is (await fleet.client("a"))  # one client per host
    await fleet.close()
