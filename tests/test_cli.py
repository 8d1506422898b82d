"""The operator's ``overcast admin …`` commands, run as an operator would.

Output is the API's ``key value`` text, which scripts parse; mistakes end
in one ``error: …`` line on stderr and a non-zero status, never a
traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, free_port, start_cloud, stop_cloud
from pg import fresh_database


def overcast(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def _credentials(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """``uuid UUID`` and ``secret KEY``, exactly those two lines."""
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(
        r"uuid ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\n"
        r"secret ([A-Za-z0-9_-]{32,})\n",
        done.stdout,
    )
    assert match, done.stdout
    return match.group(1), match.group(2)


def _no_traceback(done: subprocess.CompletedProcess[str], says: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr, done.stderr


def test_user_create_prints_working_credentials(cloud: Cloud) -> None:
    uuid, secret = _credentials(cloud.overcast("admin", "user", "create", "from cli"))
    with cloud.client(uuid, secret) as client:
        r = client.get("/user/info")
        assert r.status_code == 200
        assert "name from cli\nadmin false\n" in r.text
        assert client.get("/users/list").status_code == 404
    with cloud.client(uuid, "not the secret") as client:
        assert client.get("/user/info").status_code == 401


def test_user_create_admin(cloud: Cloud) -> None:
    uuid, secret = _credentials(cloud.overcast("admin", "user", "create", "ops", "--admin"))
    with cloud.client(uuid, secret) as client:
        assert "admin true\n" in client.get("/user/info").text
        assert uuid in client.get("/users/list").text.split()


def test_user_create_refuses_a_bad_name(cloud: Cloud) -> None:
    _no_traceback(cloud.overcast("admin", "user", "create", "   "), "name")
    _no_traceback(cloud.overcast("admin", "user", "create", "two\nlines"), "name")


@pytest.mark.postgres
def test_admin_against_postgresql(pg_url: str, tmp_path: Path) -> None:
    store = fresh_database(pg_url)
    # No --data: run where the operator stands, with the store named.
    uuid, secret = _credentials(
        overcast("admin", "--store", store, "user", "create", "pg user", cwd=tmp_path)
    )
    done = overcast("admin", "--store", store, "ip", "add-pool", "192.0.2.64/29", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "pool 192.0.2.64/29\n"), done.stderr
    # A server on the same store knows the user and the pool.
    c = start_cloud(tmp_path / "var", store=store)
    try:
        with c.client(uuid, secret) as client:
            assert "name pg user\n" in client.get("/user/info").text
            r = client.post("/resources/ip/create")
            assert r.status_code == 200, r.text
            assert "resource 192.0.2.65\n" in r.text
    finally:
        stop_cloud(c)


def test_admin_against_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    uuid, secret = _credentials(overcast("admin", "--data", str(data), "user", "create", "d"))
    assert (data / "overcast.db").is_file()
    c = start_cloud(data)
    try:
        with c.client(uuid, secret) as client:
            assert client.get("/user/info").status_code == 200
    finally:
        stop_cloud(c)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["garbage"], "'garbage' is not a network"),
        (["192.0.2.1/24"], "host bits set"),
        (["192.0.2.0/24", "--gateway", "198.51.100.1"], "gateway 198.51.100.1"),
        (["192.0.2.0/24", "--gateway", "192.0.2.0"], "gateway 192.0.2.0"),
        (["192.0.2.0/24", "--nameserver", "1.2.3"], "nameserver: '1.2.3'"),
    ],
)
def test_add_pool_refusals(cloud: Cloud, args: list[str], says: str) -> None:
    _no_traceback(cloud.overcast("admin", "ip", "add-pool", *args), says)


def test_add_pool_refuses_an_overlap(tmp_path: Path) -> None:
    data = str(tmp_path / "var")
    done = overcast("admin", "--data", data, "ip", "add-pool", "192.0.2.0/25")
    assert done.returncode == 0, done.stderr
    _no_traceback(
        overcast("admin", "--data", data, "ip", "add-pool", "192.0.2.64/26"),
        "192.0.2.64/26 overlaps the pool 192.0.2.0/25",
    )


def test_import_standard_of_a_missing_file(cloud: Cloud, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.img.gz"
    before = httpx.get(f"{cloud.url}/drives/list/standard", auth=_admin(cloud)).text
    done = cloud.overcast("admin", "drive", "import-standard", str(missing), "--name", "x")
    _no_traceback(done, str(missing))
    assert httpx.get(f"{cloud.url}/drives/list/standard", auth=_admin(cloud)).text == before


def _admin(cloud: Cloud) -> tuple[str, str]:
    return cloud.admin_uuid, cloud.admin_secret


def test_unreachable_or_unknown_store(tmp_path: Path) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    done = overcast("admin", "--store", closed, "user", "create", "x", cwd=tmp_path)
    _no_traceback(done, "store")
    unknown = f"mysql://127.0.0.1:{free_port()}/x"
    done = overcast("admin", "--store", unknown, "user", "create", "x", cwd=tmp_path)
    _no_traceback(done, "")
    assert "mysql" in done.stderr or "store" in done.stderr


def test_exist_ok_makes_make_run_repeatable(tmp_path: Path) -> None:
    """``make run`` registers the guest and a pool on every start: the second
    time must succeed and change nothing; without --exist-ok it is refused."""
    data = str(tmp_path / "var")
    image = tmp_path / "guest.img"
    image.write_bytes(b"\x01" * 4096)
    uuid = "6f766572-6361-4573-a774-67756573740a"
    imp = ("admin", "--data", data, "drive", "import-standard", str(image), "--name", "g")
    first = overcast(*imp, "--uuid", uuid, "--exist-ok")
    assert first.returncode == 0, first.stderr
    again = overcast(*imp, "--uuid", uuid, "--exist-ok")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    _no_traceback(overcast(*imp, "--uuid", uuid), f"drive {uuid} exists already")

    pool = ("admin", "--data", data, "ip", "add-pool", "192.0.2.0/24")
    assert overcast(*pool, "--exist-ok").returncode == 0
    assert overcast(*pool, "--exist-ok").returncode == 0
    _no_traceback(overcast(*pool), "overlaps the pool 192.0.2.0/24")


@pytest.mark.parametrize(
    ("manager", "says"),
    [
        ("http://127.0.0.1:1", "admin credentials"),
        ("ftp://u:k@127.0.0.1:1", "not an http"),
        ("nonsense", "not an http"),
    ],
)
def test_host_refuses_a_manager_url_it_cannot_use(tmp_path: Path, manager: str, says: str) -> None:
    r = overcast("host", "--manager", manager, "--data", str(tmp_path / "h"))
    assert r.returncode == 1
    assert r.stderr.startswith("error: --manager:") and says in r.stderr, r.stderr
    assert not (tmp_path / "h").exists()  # refused before anything was made
