"""The host registry (issue 7 groundwork): ``/hosts/…`` and ``overcast admin host add``.

On the session cloud: its own machine is registered as ``local`` with the
capacity it measured and the servers it runs; admins register, drain and
remove hosts; everyone else sees none of it; bad input changes nothing.
No host registered here is ever contacted (their URLs are loopback ports
nobody listens on).
"""

from __future__ import annotations

import httpx
import pytest

from cloud import Cloud, free_port
from test_servers import Servers, records, server_keys
from test_servers import servers as servers


def _one(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    [record] = records(r.text)
    return record


def test_the_local_machine_is_registered_with_its_load(
    admin: httpx.Client, user: httpx.Client, servers: Servers
) -> None:
    assert "local" in admin.get("/hosts/list").text.split()
    before = _one(admin.get("/hosts/local/info"))
    assert before["status"] == "active" and int(before["mem"]) > 0 and int(before["cpu"]) > 0
    assert "url" not in before
    servers.create(server_keys("weighs", mem="96"))
    after = _one(admin.get("/hosts/local/info"))
    assert int(after["used:mem"]) == int(before["used:mem"]) + 96
    assert int(after["guests"]) == int(before["guests"]) + 1
    r = admin.post("/hosts/local/destroy")
    assert r.status_code == 409, r.text


def test_register_drain_and_remove(admin: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    made = _one(admin.post("/hosts/create", content=f"url {url}/\ncpu 8000\nmem 16384\n"))
    host = made["host"]
    assert made == {
        "host": host,
        "name": url,
        "status": "active",
        "cpu": "8000",
        "mem": "16384",
        "used:cpu": "0",
        "used:mem": "0",
        "guests": "0",
        "url": url,
    }
    assert host in admin.get("/hosts/list").text.split()
    r = admin.post("/hosts/create", content=f"url {url}\ncpu 1\nmem 1\n")
    assert r.status_code == 409 and "registered already" in r.text
    assert _one(admin.post(f"/hosts/{host}/drain"))["status"] == "draining"
    again = _one(admin.post(f"/hosts/{host}/set", content="drain false\nname rack-1\nmem 8192\n"))
    assert (again["status"], again["name"], again["mem"]) == ("active", "rack-1", "8192")
    assert admin.get(f"/hosts/{host}/destroy").status_code == 405
    assert admin.post(f"/hosts/{host}/destroy").status_code == 204
    assert admin.get(f"/hosts/{host}/info").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        "cpu 1\nmem 1\n",
        "url ftp://x\ncpu 1\nmem 1\n",
        "url http://127.0.0.1:1\ncpu 0\nmem 1\n",
        "url http://127.0.0.1:1\ncpu 1\nmem lots\n",
        "url http://127.0.0.1:1\ncpu 1\nmem 1\ncolour blue\n",
        "url http://127.0.0.1:1\ncpu 1\nmem 1\nid local\n",
        "url http://127.0.0.1:1\ncpu 1\nmem 1\nid Not/An/Id\n",
        "url http://127.0.0.1:1\ncpu 1\nmem 1\nid " + "x" * 70 + "\n",
    ],
)
def test_bad_registrations_change_nothing(admin: httpx.Client, body: str) -> None:
    before = admin.get("/hosts/list").text
    r = admin.post("/hosts/create", content=body)
    assert r.status_code == 400, r.text
    assert r.headers["x-elastic-error"] == "usage"
    assert admin.get("/hosts/list").text == before


def test_hosts_are_invisible_to_users(cloud: Cloud, user: httpx.Client) -> None:
    for path in ["/hosts/list", "/hosts/info", "/hosts/local/info", "/hosts/create"]:
        assert user.post(path).status_code == 404, path
    assert httpx.get(f"{cloud.url}/hosts/list").status_code == 401


def test_cli_registers_a_host(cloud: Cloud, admin: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cloud.overcast("admin", "host", "add", url, "--cpu", "4000", "--mem", "2048")
    assert done.returncode == 0, done.stderr
    made = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert made["url"] == url and made["cpu"] == "4000"
    assert made["host"] in admin.get("/hosts/list").text.split()
    bad = cloud.overcast("admin", "host", "add", "not-a-url", "--cpu", "1", "--mem", "1")
    assert bad.returncode == 1 and bad.stderr.startswith("error: url:")
    assert admin.post(f"/hosts/{made['host']}/destroy").status_code == 204
