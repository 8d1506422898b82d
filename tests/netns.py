"""Many hosts on one machine, for issue 7's failover tests.

A *site* is what a rack of machines would be: one network namespace per
host, joined by veth pairs to a Linux bridge in a namespace of its own, and
etcd in one more. Addresses exist only inside those namespaces, except one:
a veth from the root namespace into the bridge carries ``10.N.0.1``, where a
manager run by the test listens and through which the test reaches hosts.
No namespace has a default route, so a host reaches its site and nothing
else (not other sites, not the machine's own network).

Every process of host *i* runs in a cgroup v1 freezer of its own, joined
*before* the command starts, so the agent, its detached watchdog and its
QEMUs all inherit it. That is what makes the faults real: ``kill_host``
takes the whole machine down at once (frozen first, so no process sees its
siblings die and reacts, as none could on a crashed machine), ``freeze``
stops it without it noticing, ``link_down`` pulls its cable.

Names carry the site's tag (``ocb-T``, ``oce-T``, ``ochI-T``; cgroups
``oc-T-hI`` and ``oc-T-etcd``; the root-side veth ``ocnetT``), so sites of
parallel runs never clash. An owner holds ``/run/oc-netns/T.lock`` for the
site's life; a site whose lock nobody holds (its run crashed) is destroyed
when the next one is created. Needs root, the cgroup v1 freezer, iproute2
and etcd: a missing one fails the fixture, never skips it.

Loaded as a pytest plugin by ``tests/conftest.py``: ``netsite`` is a
function-scoped factory ``netsite(hosts) -> Site``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

__all__ = ["FREEZER", "STATE_DIR", "Site", "clean_leftovers", "netsite", "site"]

FREEZER = Path("/sys/fs/cgroup/freezer")
#: Lock files live where namespaces do: both vanish together at a reboot.
STATE_DIR = Path("/run/oc-netns")
#: Candidate second octets for a site's 10.N.0.0/24.
SUBNETS = range(200, 251)
_TAG = re.compile(r"[0-9a-z]{1,8}")
_NS = re.compile(r"(?:ocb|oce|och\d+)-([0-9a-z]{1,8})")
_CGROUP = re.compile(r"oc-([0-9a-z]{1,8})-(?:h\d+|etcd)")
_WORKDIR = re.compile(r"oc-site-([0-9a-z]{1,8})-.*")
_LOCKFILE = re.compile(r"([0-9a-z]{1,8})\.lock")
_WAIT = 10.0  # seconds any kernel-side state change may take before it is an error


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed: run bash scripts/setup.sh test")
    return found


def _ip(*args: str, ns: str | None = None, batch: Sequence[str] = ()) -> str:
    """One ``ip`` command, or (``batch``) many in one run of ``ip``."""
    argv = [_tool("ip"), *(["-n", ns] if ns else []), *args]
    if batch:
        argv += ["-batch", "-"]
    done = subprocess.run(
        argv, input="\n".join(batch) + "\n" if batch else None,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}\n{batch}")
    return done.stdout


def _check_machine() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("network-namespace sites need root")
    if not (FREEZER / "freezer.state").exists() and not (FREEZER / "tasks").exists():
        raise RuntimeError(f"no cgroup v1 freezer at {FREEZER}")
    _tool("ip")
    _tool("etcd")


# --- cgroup v1 freezer ------------------------------------------------------


def _procs(cgroup: Path) -> list[int]:
    """Processes (not zombies: the kernel drops those) in ``cgroup``."""
    try:
        return sorted({int(p) for p in (cgroup / "cgroup.procs").read_text().split()})
    except FileNotFoundError:
        return []


def _state(cgroup: Path) -> str:
    return (cgroup / "freezer.state").read_text().strip()


def _set_state(cgroup: Path, state: str, wait: float = _WAIT) -> bool:
    """Ask for FROZEN or THAWED; whether the cgroup got there within ``wait``
    (freezing waits for every task to stop, which a task stuck in the kernel
    may delay)."""
    (cgroup / "freezer.state").write_text(state)
    deadline = time.monotonic() + wait
    while _state(cgroup) != state:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _kill_cgroup(cgroup: Path) -> None:
    """SIGKILL everything in ``cgroup`` until it is empty.

    Frozen while the signals go out: nothing forks past the kill, and no
    task runs between its siblings' deaths and its own."""
    if not cgroup.is_dir():
        return
    deadline = time.monotonic() + _WAIT
    while True:
        _set_state(cgroup, "FROZEN", wait=1.0)
        pids = _procs(cgroup)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _set_state(cgroup, "THAWED")
        while _procs(cgroup) and time.monotonic() < deadline:
            if set(_procs(cgroup)) - set(pids):
                break  # a task joined between the read and the freeze: go round again
            time.sleep(0.005)
        if not _procs(cgroup):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cgroup}: tasks {_procs(cgroup)} survive SIGKILL")


def _remove_cgroup(cgroup: Path) -> None:
    if not cgroup.is_dir():
        return
    _kill_cgroup(cgroup)
    deadline = time.monotonic() + _WAIT
    while True:
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY: the last task is still leaving
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# --- sites, live and dead ---------------------------------------------------


def _namespaces() -> list[str]:
    out = _ip("-j", "netns", "list")
    return [str(entry["name"]) for entry in json.loads(out or "[]")]


def _kill_namespace(ns: str) -> None:
    """Kill whatever runs in ``ns`` outside the site's cgroups (e.g. probes)."""
    deadline = time.monotonic() + _WAIT
    while pids := [int(p) for p in _ip("netns", "pids", ns).split()]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {ns}: processes {pids} survive SIGKILL")
        time.sleep(0.005)


def _destroy(tag: str) -> None:
    """Remove every trace of site ``tag``, whatever state it was left in."""
    errors: list[str] = []

    def attempt(step: Callable[..., object], *args: Any) -> None:
        try:
            step(*args)
        except Exception as err:  # keep going: one stuck part must not keep the rest
            errors.append(f"{step.__name__}{args}: {err}")

    cgroups = [c for c in FREEZER.glob(f"oc-{tag}-*") if _CGROUP.fullmatch(c.name)]
    for cgroup in cgroups:
        attempt(_kill_cgroup, cgroup)
    mine = [ns for ns in _namespaces() if (m := _NS.fullmatch(ns)) and m.group(1) == tag]
    for ns in mine:
        attempt(_kill_namespace, ns)
    if _root_link(tag) in _links():
        attempt(_ip, "link", "del", _root_link(tag))
    for ns in mine:
        attempt(_ip, "netns", "del", ns)
    for cgroup in cgroups:
        attempt(_remove_cgroup, cgroup)
    for workdir in Path(tempfile.gettempdir()).glob(f"oc-site-{tag}-*"):
        shutil.rmtree(workdir, ignore_errors=True)
    if errors:
        raise RuntimeError(f"site {tag} not fully removed:\n" + "\n".join(errors))


def _links() -> set[str]:
    return {str(link["ifname"]) for link in json.loads(_ip("-j", "link", "show") or "[]")}


def _root_link(tag: str) -> str:
    return f"ocnet{tag}"


def _tags_present() -> set[str]:
    """Tags that have anything on this machine: namespaces, cgroups, files."""
    tags = {m.group(1) for ns in _namespaces() if (m := _NS.fullmatch(ns))}
    tags |= {m.group(1) for c in FREEZER.iterdir() if (m := _CGROUP.fullmatch(c.name))}
    tmp = Path(tempfile.gettempdir())
    tags |= {m.group(1) for d in tmp.glob("oc-site-*") if (m := _WORKDIR.fullmatch(d.name))}
    if STATE_DIR.is_dir():
        tags |= {m.group(1) for f in STATE_DIR.iterdir() if (m := _LOCKFILE.fullmatch(f.name))}
    return tags


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serialises creating and reaping sites among all runs on this machine."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _claim(tag: str) -> IO[str] | None:
    """The tag's lock file, held; None if a live run holds it."""
    f = open(STATE_DIR / f"{tag}.lock", "a")  # noqa: SIM115 - held for the site's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _reap_dead() -> list[str]:
    """Destroy the sites whose runs died. Caller holds the machine lock.

    An owner takes its tag's lock file (under the machine lock) before it
    makes anything, so a tag with things but no held lock is dead."""
    reaped = []
    for tag in sorted(_tags_present()):
        held = _claim(tag)
        if held is None:
            continue
        try:
            _destroy(tag)
            reaped.append(tag)
        except RuntimeError as err:  # a stuck leftover must not stop a new run
            print(f"netns: leftover site {tag}: {err}", file=sys.stderr)
        finally:
            (STATE_DIR / f"{tag}.lock").unlink(missing_ok=True)
            held.close()
    return reaped


def clean_leftovers() -> list[str]:
    """Destroy what crashed earlier runs left; the tags removed."""
    _check_machine()
    with _machine_lock():
        return _reap_dead()


def _free_subnet() -> int:
    """A 10.N.0.0/24 that no route or address on this machine touches."""
    taken = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = str(route.get("dst", "default"))
        if dst != "default":
            taken.append(ipaddress.ip_network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for addr in link.get("addr_info", []):
            taken.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", False))
    for n in SUBNETS:
        net = ipaddress.ip_network(f"10.{n}.0.0/24")
        if not any(net.overlaps(t) for t in taken):
            return n
    raise RuntimeError(f"no free 10.N.0.0/24 for N in {SUBNETS}: every one is routed")


# --- one site ---------------------------------------------------------------


class Site:
    """A live site: ``hosts`` host namespaces (numbered from 1), a bridge,
    etcd, and the root namespace's way in."""

    def __init__(self, tag: str, subnet: int, hosts: int, workdir: Path) -> None:
        self.tag = tag
        self.subnet = subnet
        self.hosts = hosts
        self.workdir = workdir
        self.bridge_ns = f"ocb-{tag}"
        self.etcd_ns = f"oce-{tag}"
        self.root_link = _root_link(tag)
        self.etcd_log = workdir / "etcd.log"
        self._procs: dict[str, list[subprocess.Popen[bytes]]] = {}

    # addresses and names

    def _addr(self, last: int) -> str:
        return f"10.{self.subnet}.0.{last}"

    @property
    def manager_addr(self) -> str:
        """The root namespace's address on the site: managers listen here."""
        return self._addr(1)

    @property
    def etcd_addr(self) -> str:
        return self._addr(2)

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_addr}:2379"

    def host_addr(self, i: int) -> str:
        return self._addr(10 + self._host(i))

    def host_ns(self, i: int) -> str:
        return f"och{self._host(i)}-{self.tag}"

    def cgroup(self, i: int) -> Path:
        return FREEZER / f"oc-{self.tag}-h{self._host(i)}"

    def _host(self, i: int) -> int:
        if not 1 <= i <= self.hosts:
            raise ValueError(f"host {i}: this site has hosts 1..{self.hosts}")
        return i

    def _port(self, i: int) -> str:
        """Host ``i``'s veth end on the bridge (in the bridge namespace)."""
        return f"h{self._host(i)}"

    def free_port(self) -> int:
        """A TCP port free on :attr:`manager_addr` (for a manager to listen on)."""
        with socket.socket() as s:
            s.bind((self.manager_addr, 0))
            return int(s.getsockname()[1])

    # processes

    def spawn(
        self,
        i: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        *,
        new_session: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Run ``argv`` as a process of host ``i``: in its namespace and its cgroup.

        The environment is this process's without ``OVERCAST_*`` and proxy
        settings (a host is configured by what the test gives it), plus
        ``env``. Output is appended to ``log`` (else ``workdir/hI.log``)."""
        return self._spawn(
            str(self._host(i)), self.cgroup(i), self.host_ns(i), argv, env,
            log or self.workdir / f"h{i}.log", new_session,
        )  # fmt: skip

    def _spawn(
        self,
        key: str,
        cgroup: Path,
        ns: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        log: Path,
        new_session: bool,
    ) -> subprocess.Popen[bytes]:
        # The shell joins the cgroup from outside the namespace (``ip netns
        # exec`` remounts /sys), then becomes the command: one pid throughout.
        script = (
            'echo $$ > "$1" || exit 125; ip=$2 ns=$3; shift 3; exec "$ip" netns exec "$ns" "$@"'
        )
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OVERCAST_") and not k.lower().endswith("_proxy")
        }
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", str(cgroup / "tasks"), _tool("ip"), ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, **(env or {})},
                start_new_session=new_session,
            )
        self._procs.setdefault(key, []).append(proc)
        # Return once it is in the cgroup: a fault injected right away must hit it.
        deadline = time.monotonic() + _WAIT
        while proc.pid not in _procs(cgroup) and proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pid {proc.pid} did not join {cgroup}")
            time.sleep(0.001)
        return proc

    def run(
        self, i: int, argv: Sequence[str], *, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in host ``i``'s namespace but *outside* its cgroup: an
        observer's probe, which works while the host is frozen."""
        return subprocess.run(
            [_tool("ip"), "netns", "exec", self.host_ns(i), *argv],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def pids(self, i: int) -> list[int]:
        """The processes of host ``i`` (its cgroup's, zombies excepted)."""
        return _procs(self.cgroup(i))

    # faults

    def kill_host(self, i: int) -> None:
        """Host ``i`` crashes: every process in it dies at once (SIGKILL)."""
        _kill_cgroup(self.cgroup(i))
        self._reap(str(i))

    def freeze(self, i: int) -> None:
        """Host ``i`` stops dead (all its processes), returning once it has."""
        if not _set_state(self.cgroup(i), "FROZEN"):
            raise RuntimeError(f"host {i} did not freeze: {_state(self.cgroup(i))}")

    def thaw(self, i: int) -> None:
        if not _set_state(self.cgroup(i), "THAWED"):
            raise RuntimeError(f"host {i} did not thaw: {_state(self.cgroup(i))}")

    def frozen(self, i: int) -> bool:
        """Whether host ``i`` is frozen or on its way there (FREEZING)."""
        return _state(self.cgroup(i)) != "THAWED"

    def link_down(self, i: int) -> None:
        """Unplug host ``i``: its bridge port goes down, so it reaches neither
        etcd nor the manager, and nobody reaches it."""
        _ip("link", "set", self._port(i), "down", ns=self.bridge_ns)

    def link_up(self, i: int) -> None:
        _ip("link", "set", self._port(i), "up", ns=self.bridge_ns)

    # life

    def _reap(self, key: str) -> None:
        """Wait for the (killed) processes spawned as ``key``: no zombies, and
        no Popen outliving its process unwaited."""
        for proc in self._procs.pop(key, []):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _build(self) -> None:
        """Everything past the root veth (which the caller made under the
        machine lock, as it claims the subnet)."""
        members = [(self.etcd_ns, "etcd", 2)]
        members += [(self.host_ns(i), self._port(i), 10 + i) for i in range(1, self.hosts + 1)]
        _ip(batch=[f"netns add {ns}" for ns, _, _ in members])
        bridge = [
            "link set lo up",
            "link add br0 type bridge",
            "link set br0 up",
            "link set root master br0 up",
        ]
        for ns, port, _ in members:
            bridge += [
                f"link add {port} type veth peer name eth0 netns {ns}",
                f"link set {port} master br0 up",
            ]
        _ip(batch=bridge, ns=self.bridge_ns)
        for ns, _, last in members:
            _ip(
                batch=["link set lo up", f"addr add {self._addr(last)}/24 dev eth0",
                       "link set eth0 up"],
                ns=ns,
            )  # fmt: skip
        for cgroup in [*(self.cgroup(i) for i in range(1, self.hosts + 1)), self._etcd_cgroup]:
            cgroup.mkdir()

    @property
    def _etcd_cgroup(self) -> Path:
        return FREEZER / f"oc-{self.tag}-etcd"

    def _start_etcd(self) -> None:
        client, peer = self.etcd_url, f"http://{self.etcd_addr}:2380"
        argv = [
            _tool("etcd"),
            "--name", "site",
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"site={peer}",
            # One member elects itself after an election timeout: 0.2 s, not 1 s.
            "--heartbeat-interval", "20",
            "--election-timeout", "200",
        ]  # fmt: skip
        proc = self._spawn("etcd", self._etcd_cgroup, self.etcd_ns, argv, None, self.etcd_log, True)
        deadline = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=1) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"etcd exited:\n{self.etcd_log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    r = http.get(f"{self.etcd_url}/health")
                    if r.status_code == 200 and r.json().get("health") == "true":
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not answer:\n{self.etcd_log.read_text()}")
                time.sleep(0.02)

    def _teardown(self) -> None:
        try:
            _destroy(self.tag)
        finally:
            for key in list(self._procs):
                self._reap(key)


@contextlib.contextmanager
def site(hosts: int, tag: str | None = None) -> Iterator[Site]:
    """A fresh site of ``hosts`` hosts, destroyed on the way out (even when
    the body fails); sites that crashed runs left behind are destroyed first."""
    _check_machine()
    if not 1 <= hosts <= 200:
        raise ValueError("hosts: 1..200")
    if tag is not None and not _TAG.fullmatch(tag):
        raise ValueError(f"tag {tag!r}: 1-8 of [0-9a-z]")
    with _machine_lock():
        _reap_dead()
        present = _tags_present()
        if tag is None:
            tag = next(t for t in iter(lambda: secrets.token_hex(3), "") if t not in present)
        elif tag in present:
            raise RuntimeError(f"site tag {tag} is in use")
        held = _claim(tag)
        if held is None:
            raise RuntimeError(f"site tag {tag} is in use")
        try:
            workdir = Path(tempfile.mkdtemp(prefix=f"oc-site-{tag}-"))
            the_site = Site(tag, _free_subnet(), hosts, workdir)
            # The bridge namespace, the root veth and its address: from here
            # the subnet is visibly taken, so the machine lock can go.
            _ip("netns", "add", the_site.bridge_ns)
            _ip(
                batch=[
                    f"link add {the_site.root_link} type veth peer name root"
                    f" netns {the_site.bridge_ns}",
                    f"addr add {the_site.manager_addr}/24 dev {the_site.root_link}",
                    f"link set {the_site.root_link} up",
                ]
            )
        except BaseException:
            with contextlib.suppress(Exception):
                _destroy(tag)
            (STATE_DIR / f"{tag}.lock").unlink(missing_ok=True)
            held.close()
            raise
    try:
        the_site._build()
        the_site._start_etcd()
        yield the_site
    finally:
        try:
            the_site._teardown()
        finally:
            (STATE_DIR / f"{tag}.lock").unlink(missing_ok=True)
            held.close()


@pytest.fixture
def netsite() -> Iterator[Callable[[int], Site]]:
    """``netsite(hosts)``: a new site, destroyed when the test ends."""
    with contextlib.ExitStack() as stack:

        def make(hosts: int) -> Site:
            return stack.enter_context(site(hosts))

        yield make
