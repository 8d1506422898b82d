"""IP addresses and VLANs: pools, allocation, info, list, set, destroy.

Addresses come from documentation ranges (RFC 5737): they are only records
in the store, no packet is sent. Allocation is checked on clouds of this
module's own, so that the pools are known exactly; VLANs need no pool and
use the session's shared cloud.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, new_user, start_cloud, stop_cloud
from pg import fresh_database

JSON = {"Accept": "application/json"}
IP_KEYS = {"resource", "type", "name", "user", "netmask", "gateway", "nameserver"}


def _info(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return dict(line.split(" ", 1) for line in r.text.splitlines())


def _add_pool(c: Cloud, cidr: str, *options: str) -> None:
    done = c.overcast("admin", "ip", "add-pool", cidr, *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pool {cidr}\n"


def _me(client: httpx.Client) -> str:
    return _info(client.get("/user/info"))["user"]


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """A cloud of our own with one /24 pool."""
    c = start_cloud(tmp_path_factory.mktemp("roomy") / "var")
    try:
        _add_pool(c, "198.51.100.0/24", "--gateway", "198.51.100.1", "--nameserver", "198.51.100.2")
        yield c
    finally:
        stop_cloud(c)


@pytest.fixture
def someone(roomy: Cloud) -> Iterator[httpx.Client]:
    with new_user(roomy) as client:
        yield client


# -- IPs ---------------------------------------------------------------------


def test_ip_create_and_info(someone: httpx.Client) -> None:
    info = _info(someone.post("/resources/ip/create"))
    assert set(info) == IP_KEYS
    address = ipaddress.ip_address(info["resource"])
    network = ipaddress.ip_network("198.51.100.0/24")
    assert address in network
    assert str(address) not in {"198.51.100.0", "198.51.100.255", "198.51.100.1", "198.51.100.2"}
    assert info["type"] == "ip"
    assert info["name"] == info["resource"]  # no name given: the address
    assert info["user"] == _me(someone)
    assert (info["netmask"], info["gateway"], info["nameserver"]) == (
        "255.255.255.0",
        "198.51.100.1",
        "198.51.100.2",
    )
    assert _info(someone.get(f"/resources/ip/{address}/info")) == info
    as_json = someone.post(f"/resources/ip/{address}/info", headers=JSON).json()
    assert as_json == info


def test_ip_create_takes_name_tags_and_metadata(someone: httpx.Client) -> None:
    r = someone.post(
        "/resources/ip/create",
        json={"name": "web front", "tags": ["web", "prod"], "user:owner": "ops team"},
        headers=JSON,
    )
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["name"], info["tags"], info["user:owner"]) == ("web front", "web prod", "ops team")


def test_two_users_never_share_an_address(roomy: Cloud, someone: httpx.Client) -> None:
    with new_user(roomy) as other:
        mine = {_info(someone.post("/resources/ip/create"))["resource"] for _ in range(3)}
        theirs = {_info(other.post("/resources/ip/create"))["resource"] for _ in range(3)}
    assert len(mine) == len(theirs) == 3
    assert not mine & theirs


def test_lists_in_text_and_json(someone: httpx.Client) -> None:
    ip = _info(someone.post("/resources/ip/create"))["resource"]
    vlan = _info(someone.post("/resources/vlan/create"))["resource"]
    assert someone.get("/resources/list").text.splitlines() == [f"ip {ip}", f"vlan {vlan}"]
    assert someone.get("/resources/ip/list").text == f"ip {ip}\n"
    assert someone.post("/resources/vlan/list").text == f"vlan {vlan}\n"
    assert someone.get("/resources/list", headers=JSON).json() == [
        {"type": "ip", "resource": ip},
        {"type": "vlan", "resource": vlan},
    ]
    assert someone.get("/resources/vlan/list", headers=JSON).json() == [
        {"type": "vlan", "resource": vlan}
    ]
    infos = someone.get("/resources/info", headers=JSON).json()
    assert [(i["type"], i["resource"]) for i in infos] == [("ip", ip), ("vlan", vlan)]
    assert [i["resource"] for i in someone.get("/resources/ip/info", headers=JSON).json()] == [ip]
    # Text info of several objects: blank-line separated records.
    records = someone.get("/resources/info").text.strip().split("\n\n")
    assert [dict(x.split(" ", 1) for x in rec.splitlines())["resource"] for rec in records] == [
        ip,
        vlan,
    ]


def test_ip_set(someone: httpx.Client) -> None:
    created = _info(someone.post("/resources/ip/create", content="name before\n"))
    path = f"/resources/ip/{created['resource']}"
    info = _info(someone.post(f"{path}/set", content="name after all\ntags a b\nuser:x 1\n"))
    assert (info["name"], info["tags"], info["user:x"]) == ("after all", "a b", "1")
    info = _info(someone.post(f"{path}/set", content="tags c\nuser:y 2\n"))
    # Tags are replaced, user:* keys merge, the rest stays.
    assert (info["name"], info["tags"], info["user:x"], info["user:y"]) == (
        "after all",
        "c",
        "1",
        "2",
    )
    assert _info(someone.get(f"{path}/info")) == info
    # What info shows may be sent back as it is: nothing changes.
    echo = "".join(f"{k} {v}\n" for k, v in info.items())
    assert _info(someone.post(f"{path}/set", content=echo)) == info
    for key in ("resource", "netmask", "gateway", "nameserver", "user", "type"):
        assert info[key] == created[key]


def test_ip_destroy(someone: httpx.Client) -> None:
    address = _info(someone.post("/resources/ip/create"))["resource"]
    r = someone.post(f"/resources/ip/{address}/destroy")
    assert (r.status_code, r.content) == (204, b"")
    r = someone.get(f"/resources/ip/{address}/info")
    assert (r.status_code, r.headers["x-elastic-error"]) == (404, "missing")
    assert address in r.text
    assert someone.get("/resources/ip/list").text == ""
    r = someone.post(f"/resources/ip/{address}/destroy")
    assert r.status_code == 404


# -- pools: exhaustion, reuse, concurrency ---------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Cloud]:
    c = start_cloud(tmp_path / "var")
    try:
        yield c
    finally:
        stop_cloud(c)


def _full(r: httpx.Response) -> None:
    assert (r.status_code, r.headers["x-elastic-error"]) == (507, "full"), r.text
    assert "no free IP address" in r.text


def test_exhaustion_and_reuse(small: Cloud) -> None:
    with new_user(small) as a, new_user(small) as b:
        _full(a.post("/resources/ip/create"))  # no pool yet
        _add_pool(small, "192.0.2.0/29", "--gateway", "192.0.2.1", "--nameserver", "192.0.2.6")
        _add_pool(small, "192.0.2.16/30", "--gateway", "192.0.2.17")
        infos = []
        while (r := a.post("/resources/ip/create")).status_code == 200:
            infos.append(_info(r))
            assert len(infos) <= 5, infos
        _full(r)
        # Every host address but the gateways and the nameserver; never the
        # network or broadcast address.
        got = {i["resource"] for i in infos}
        assert got == {"192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.18"}
        for info in infos:
            if info["resource"] == "192.0.2.18":
                assert (info["netmask"], info["gateway"]) == ("255.255.255.252", "192.0.2.17")
                assert "nameserver" not in info
            else:
                assert (info["netmask"], info["gateway"], info["nameserver"]) == (
                    "255.255.255.248",
                    "192.0.2.1",
                    "192.0.2.6",
                )
        # A refused create changed nothing; another user is refused too.
        before = a.get("/resources/info", headers=JSON).json()
        _full(b.post("/resources/ip/create", content="name hopeful\n"))
        assert a.get("/resources/info", headers=JSON).json() == before
        assert b.get("/resources/list").text == ""
        # Destroying gives the address back, to anyone.
        assert a.post("/resources/ip/192.0.2.4/destroy").status_code == 204
        again = _info(b.post("/resources/ip/create"))
        assert (again["resource"], again["user"]) == ("192.0.2.4", _me(b))
        assert a.get("/resources/ip/192.0.2.4/info").status_code == 404
        _full(a.post("/resources/ip/create"))


async def _create_many(c: Cloud, users: list[tuple[str, str]], each: int) -> list[httpx.Response]:
    clients = [httpx.AsyncClient(base_url=c.url, auth=u, timeout=60) for u in users]
    try:
        return await asyncio.gather(
            *(client.post("/resources/ip/create") for client in clients for _ in range(each))
        )
    finally:
        for client in clients:
            await client.aclose()


def _credentials(c: Cloud, n: int) -> list[tuple[str, str]]:
    users = []
    with c.admin_client() as admin:
        for i in range(n):
            info = _info(admin.post("/users/create", content=f"name racer{i}\n"))
            users.append((info["user"], info["secret"]))
    return users


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_concurrent_creates_never_share_an_address(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = fresh_database(request.getfixturevalue("pg_url")) if store == "postgresql" else None
    c = start_cloud(tmp_path / "var", store=url)
    try:
        options = ("--store", url) if url else ()
        done = c.overcast("admin", *options, "ip", "add-pool", "192.0.2.32/28")
        assert done.returncode == 0, done.stderr
        users = _credentials(c, 4)
        replies = await _create_many(c, users, 5)  # 20 creates, 14 addresses
        won = [_info(r) for r in replies if r.status_code == 200]
        for r in replies:
            if r.status_code != 200:
                _full(r)
        addresses = [w["resource"] for w in won]
        assert len(addresses) == len(set(addresses)) == 14
        hosts = {str(h) for h in ipaddress.ip_network("192.0.2.32/28").hosts()}
        assert set(addresses) == hosts
        # What each user was told is what each user owns.
        for uuid, secret in users:
            with c.client(uuid, secret) as client:
                owned = set(client.get("/resources/ip/list").text.split()) - {"ip"}
                told = {w["resource"] for w in won if w["user"] == uuid}
                assert owned == told
    finally:
        stop_cloud(c)


# -- VLANs (no pool needed: the shared cloud) --------------------------------


def test_vlan_lifecycle(user: httpx.Client) -> None:
    plain = _info(user.post("/resources/vlan/create"))
    assert set(plain) == {"resource", "type", "name", "user"}
    assert plain["type"] == "vlan"
    assert plain["name"] == plain["resource"]  # no name given: the UUID
    assert plain["user"] == _me(user)
    named = _info(user.post("/resources/vlan/create", content="name backend net\n"))
    assert named["name"] == "backend net"
    assert named["resource"] != plain["resource"]
    path = f"/resources/vlan/{named['resource']}"
    assert _info(user.get(f"{path}/info")) == named
    assert user.get(f"{path}/info", headers=JSON).json() == named
    assert user.get("/resources/vlan/list").text.splitlines() == [
        f"vlan {plain['resource']}",
        f"vlan {named['resource']}",
    ]
    changed = _info(user.post(f"{path}/set", json={"name": "db net", "tags": "db", "user:a": "b"}))
    assert (changed["name"], changed["tags"], changed["user:a"]) == ("db net", "db", "b")
    assert _info(user.get(f"{path}/info")) == changed
    assert user.post(f"{path}/destroy").status_code == 204
    r = user.get(f"{path}/info")
    assert (r.status_code, r.headers["x-elastic-error"]) == (404, "missing")
    assert user.get("/resources/vlan/list").text == f"vlan {plain['resource']}\n"


def test_ips_and_vlans_in_use_by_a_server_are_busy(roomy: Cloud) -> None:
    """API.md: destroy is ``409 busy`` while a server uses the resource."""
    with new_user(roomy) as client:
        ip = _info(client.post("/resources/ip/create"))["resource"]
        vlan = _info(client.post("/resources/vlan/create"))["resource"]
        # A diskless guest: QEMU runs (its BIOS finds nothing to boot), which
        # is all this needs.
        config = (
            f"name net\ncpu 500\nmem 64\nnic:0:model e1000\nnic:0:dhcp {ip}\n"
            f"nic:1:model virtio\nnic:1:vlan {vlan}\n"
        )
        server = _info(client.post("/servers/create", content=config))
        try:
            assert server["nic:0:dhcp:ip"] == ip and server["nic:1:vlan"] == vlan
            for path in (f"/resources/ip/{ip}/destroy", f"/resources/vlan/{vlan}/destroy"):
                r = client.post(path)
                assert r.status_code == 409, r.text
                assert r.headers["x-elastic-error"] == "busy"
                assert server["server"] in r.text
            assert ip in client.get("/resources/ip/list").text
        finally:
            assert client.post(f"/servers/{server['server']}/destroy").status_code == 204
        assert client.post(f"/resources/ip/{ip}/destroy").status_code == 204
        assert client.post(f"/resources/vlan/{vlan}/destroy").status_code == 204
