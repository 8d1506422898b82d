"""The many-hosts harness itself (``tests/netns.py``), with real processes.

Issue 7's failover tests trust it to mean what it says: a host reaches its
site and nothing else, a frozen host makes no progress, a killed host leaves
no process behind, an unplugged host reaches nobody, and a site (even one
whose run crashed) leaves nothing on the machine.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

import netns
from netns import FREEZER, STATE_DIR, Site, clean_leftovers, site

# Until conftest lists the "netns" plugin, the fixture comes in this way.
netsite = netns.netsite

Make = Callable[[int], Site]

#: Inside a namespace: try a TCP connection to each HOST:PORT, report how it went.
PROBE = """
import errno, json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        out[target] = "ok"
    except TimeoutError:
        out[target] = "timeout"
    except OSError as err:
        out[target] = errno.errorcode.get(err.errno or 0, str(err))
print(json.dumps(out))
"""


def probe(s: Site, i: int, *targets: str) -> dict[str, str]:
    done = s.run(i, [sys.executable, "-c", PROBE, *targets])
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def http() -> httpx.Client:
    """From the root namespace, never through a proxy."""
    return httpx.Client(trust_env=False, timeout=5)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def traces(tag: str) -> list[str]:
    """Whatever of site ``tag`` is still on the machine."""
    found = [ns for ns in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout.split() if ns.endswith(f"-{tag}")]  # fmt: skip
    found += [str(c) for c in FREEZER.glob(f"oc-{tag}-*")]
    link = subprocess.run(["ip", "link", "show", f"ocnet{tag}"], capture_output=True)
    if link.returncode == 0:
        found.append(f"ocnet{tag}")
    found += [str(p) for p in STATE_DIR.glob(f"{tag}.lock")]
    found += [str(p) for p in Path("/tmp").glob(f"oc-site-{tag}-*")]
    return found


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_etcd_answers_the_root_namespace_and_the_hosts(netsite: Make, tmp_path: Path) -> None:
    s = netsite(2)
    assert s.etcd_url == f"http://10.{s.subnet}.0.2:2379"
    assert (s.manager_addr, s.host_addr(1), s.host_addr(2)) == (
        f"10.{s.subnet}.0.1", f"10.{s.subnet}.0.11", f"10.{s.subnet}.0.12",
    )  # fmt: skip
    with http() as c:
        assert c.get(f"{s.etcd_url}/health").json()["health"] == "true"
        put = {"key": b64("site/probe"), "value": b64("from the root namespace")}
        c.post(f"{s.etcd_url}/v3/kv/put", json=put).raise_for_status()
    # Read back from inside host 2, as a process of that host.
    script = (
        "import json, urllib.request, sys\n"
        f"req = urllib.request.Request('{s.etcd_url}/v3/kv/range',"
        f" data=json.dumps({{'key': '{b64('site/probe')}'}}).encode())\n"
        "print(json.load(urllib.request.urlopen(req, timeout=5))['kvs'][0]['value'])\n"
    )
    log = tmp_path / "h2.log"
    proc = s.spawn(2, [sys.executable, "-c", script], log=log)
    assert proc.wait(30) == 0, log.read_text()
    assert base64.b64decode(log.read_text().strip()).decode() == "from the root namespace"


def test_a_host_reaches_its_site_and_nothing_else(netsite: Make) -> None:
    a, b = netsite(2), netsite(1)
    assert a.subnet != b.subnet
    with socket.socket() as manager, socket.socket() as loopback:
        manager.bind((a.manager_addr, 0))
        manager.listen()
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        on_manager = f"{a.manager_addr}:{manager.getsockname()[1]}"
        on_loopback = f"127.0.0.1:{loopback.getsockname()[1]}"
        seen = probe(
            a, 1, f"{a.etcd_addr}:2379", on_manager, f"{a.host_addr(2)}:9",
            on_loopback, f"{b.etcd_addr}:2379", f"{b.host_addr(1)}:9",
        )  # fmt: skip
    assert seen == {
        f"{a.etcd_addr}:2379": "ok",
        on_manager: "ok",  # the root namespace's address on the site
        f"{a.host_addr(2)}:9": "ECONNREFUSED",  # reached host 2, nothing listens there
        on_loopback: "ECONNREFUSED",  # the host's own loopback, not the machine's
        f"{b.etcd_addr}:2379": "ENETUNREACH",  # another site
        f"{b.host_addr(1)}:9": "ENETUNREACH",
    }
    # No route anywhere else (a lookup only: nothing is sent).
    lookup = a.run(1, ["ip", "route", "get", "192.0.2.1"])
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr
    assert a.run(1, ["ip", "route", "show", "default"]).stdout == ""


def test_serve_in_a_host_answers_the_root_namespace(netsite: Make, tmp_path: Path) -> None:
    s = netsite(1)
    data = tmp_path / "var"
    url = f"http://{s.host_addr(1)}:8080"
    proc = s.spawn(
        1,
        [sys.executable, "-m", "overcast.cli", "serve", "--data", str(data),
         "--listen", f"{s.host_addr(1)}:8080"],
        env={"OVERCAST_CALLBACK_PRIVATE": "true"},
        log=tmp_path / "serve.log",
    )  # fmt: skip
    with http() as c:

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return c.get(f"{url}/drives/list").status_code == 401
            except httpx.TransportError:
                return False

        wait_for("overcast serve", answers, timeout=60)
        creds = dict(line.split(" ", 1) for line in (data / "admin.txt").read_text().splitlines())
        r = c.get(f"{url}/user/info", auth=(creds["uuid"], creds["secret"]))
        assert r.status_code == 200, r.text
    # The Popen's pid is the command itself (SIGSTOP it to stop the agent alone).
    assert proc.pid in s.pids(1)
    assert b"overcast.cli" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()


def test_freeze_stops_a_host_and_thaw_resumes_it(netsite: Make, tmp_path: Path) -> None:
    s = netsite(1)
    ticks = tmp_path / "ticks"
    ticks.touch()
    # Each tick is a new child process (date, sleep): all must be in the cgroup.
    s.spawn(1, ["sh", "-c", f"while :; do date +%s%N >> {ticks}; sleep 0.02; done"])

    def count() -> int:
        return len(ticks.read_text().splitlines())

    wait_for("ticks", lambda: count() >= 3)
    s.freeze(1)
    assert s.frozen(1)
    frozen_at = count()
    time.sleep(0.5)
    assert count() == frozen_at
    s.thaw(1)
    assert not s.frozen(1)
    wait_for("ticks after the thaw", lambda: count() > frozen_at + 1)
    stamps = [int(t) for t in ticks.read_text().splitlines()]
    assert stamps[frozen_at] - stamps[frozen_at - 1] >= 0.5e9  # the pause shows in the clock


def test_kill_host_leaves_no_process_and_spares_the_others(netsite: Make) -> None:
    s = netsite(2)
    # An orphan in a session of its own (like a detached watchdog) and a child.
    first = s.spawn(1, ["sh", "-c", "setsid sleep 300 & sleep 300 & wait"])
    other = s.spawn(2, ["sleep", "300"])
    wait_for("host 1's processes", lambda: len(s.pids(1)) >= 3)
    victims = s.pids(1)
    assert first.pid in victims
    s.freeze(1)  # a frozen host dies too
    s.kill_host(1)
    assert s.pids(1) == []
    assert not s.frozen(1)
    assert first.returncode == -signal.SIGKILL
    assert all(gone(pid) for pid in victims)
    assert other.poll() is None and s.pids(2) == [other.pid]
    # The machine boots again: host 1 runs processes as before.
    assert s.spawn(1, ["true"]).wait(10) == 0


def test_link_down_cuts_a_host_off_and_link_up_plugs_it_back(netsite: Make) -> None:
    s = netsite(2)
    etcd = f"{s.etcd_addr}:2379"
    assert probe(s, 1, etcd) == {etcd: "ok"}
    s.link_down(1)
    assert probe(s, 1, etcd)[etcd] in {"timeout", "EHOSTUNREACH"}
    assert probe(s, 2, etcd) == {etcd: "ok"}  # the rest of the site is untouched
    with socket.socket() as sock:  # nobody reaches host 1 either
        sock.settimeout(0.5)
        assert sock.connect_ex((s.host_addr(1), 9)) != 0
    with http() as c:
        assert c.get(f"{s.etcd_url}/health").status_code == 200
    s.link_up(1)
    wait_for("host 1 back on the site", lambda: probe(s, 1, etcd) == {etcd: "ok"})


def test_a_site_leaves_nothing_behind() -> None:
    with site(2) as s:
        tag = s.tag
        sleeper = s.spawn(1, ["sleep", "300"])
        assert len(traces(tag)) >= 5
    assert traces(tag) == []
    assert sleeper.returncode == -signal.SIGKILL


def test_a_crashed_runs_site_is_cleaned_up() -> None:
    """A run killed mid-test leaves its site running (etcd included); the next
    site created (here: clean_leftovers) removes it and its processes."""
    code = (
        "import netns, sys, time\n"
        "cm = netns.site(1)\n"  # kept: a collected context manager would tear down
        "s = cm.__enter__()\n"
        "s.spawn(1, ['sleep', '300'])\n"
        "print(s.tag, *s.pids(1), flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert run.stdout is not None
    tag, *pids = run.stdout.readline().decode().split()
    # Held so that a site made by a parallel run does not reap it first.
    with netns._machine_lock():
        run.kill()
        run.wait()
        run.stdout.close()
        left = traces(tag)
        assert any(t.endswith(f"oc-{tag}-etcd") for t in left) and pids
        assert not any(gone(int(pid)) for pid in pids)
        assert tag in netns._reap_dead()  # what clean_leftovers() and site() run
    assert traces(tag) == []
    assert tag not in clean_leftovers()
    assert all(gone(int(pid)) for pid in pids)
