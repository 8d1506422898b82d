"""A many-host cloud on a test site (:mod:`netns`): managers in the root
namespace, one ``overcast host`` per host namespace, etcd in its own, and
one drive directory every host sees (the shared storage).

Used by the failover tests and the failover benchmark. Everything a test
looks at is real: the manager's API, each host's own API (the manager's
admin credentials are every host's), the QEMU processes in each host's
cgroup, and etcd.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cloud import Cloud, start_cloud, stop_cloud
from netns import Site
from overcast.store.etcd import Etcd

__all__ = ["Cluster", "HostAgent", "guest_copies", "guest_keys", "wait_for"]

#: Host agents listen on this port of their namespace's address.
HOST_PORT = 8080


def wait_for(check: Callable[[], object], seconds: float, what: str, every: float = 0.05) -> object:
    """Poll ``check`` until it returns something true; its value."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(every)


@dataclass
class HostAgent:
    index: int
    data: Path
    url: str
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster:
    site: Site
    work: Path
    ttl: int = 3
    margin: float = 0.5
    store: str | None = None
    managers: list[Cloud] = field(default_factory=list)
    hosts: dict[int, HostAgent] = field(default_factory=dict)

    @property
    def shared(self) -> Path:
        return self.work / "drives"

    @property
    def manager(self) -> Cloud:
        return self.managers[0]

    def manager_env(self) -> dict[str, str]:
        return {
            "OVERCAST_ETCD": self.site.etcd_url,
            "OVERCAST_LOCAL_HOST": "false",
            "OVERCAST_DRIVES": str(self.shared),
            "OVERCAST_LEASE_TTL": str(self.ttl),
            "OVERCAST_FAILOVER_MARGIN": str(self.margin),
            "OVERCAST_HOST_ID": "manager",
        }

    def start_manager(self, n: int = 0, port: int | None = None) -> Cloud:
        """Manager ``n`` (its own data directory; one store for all)."""
        self.shared.mkdir(parents=True, exist_ok=True)
        data = self.work / f"manager{n}"
        if n > 0 and not (data / "admin.txt").exists():
            # Every manager is one cloud: the first one's admin is theirs too.
            data.mkdir(parents=True, exist_ok=True)
            (data / "admin.txt").write_text((self.work / "manager0" / "admin.txt").read_text())
        env = self.manager_env()
        port = port or self.site.free_port()
        env["OVERCAST_ADVERTISE"] = f"http://{self.site.manager_addr}:{port}"
        cloud = start_cloud(data, self.store, env, address=self.site.manager_addr, port=port)
        if n < len(self.managers):
            self.managers[n] = cloud
        else:
            self.managers.append(cloud)
        return cloud

    def kill_manager(self, n: int = 0) -> None:
        cloud = self.managers[n]
        cloud.process.send_signal(signal.SIGKILL)
        cloud.process.wait()

    def restart_manager(self, n: int = 0) -> Cloud:
        old = self.managers[n]
        return self.start_manager(n, port=int(old.url.rsplit(":", 1)[1]))

    def manager_url_with_creds(self) -> str:
        m = self.manager
        return m.url.replace("http://", f"http://{m.admin_uuid}:{m.admin_secret}@")

    def start_host(self, i: int) -> HostAgent:
        agent = self.hosts.get(i)
        data = self.work / f"h{i}"
        url = f"http://{self.site.host_addr(i)}:{HOST_PORT}"
        argv = [
            sys.executable,
            "-m",
            "overcast.cli",
            "host",
            "--manager",
            self.manager_url_with_creds(),
            "--data",
            str(data),
            "--listen",
            f"{self.site.host_addr(i)}:{HOST_PORT}",
            "--etcd",
            self.site.etcd_url,
            "--drives",
            str(self.shared),
            "--id",
            f"h{i}",
        ]
        env = {
            "OVERCAST_LEASE_TTL": str(self.ttl),
            "OVERCAST_CALLBACK_PRIVATE": "true",
            "OVERCAST_CALLBACK_RETRY": "0.5",
        }
        process = self.site.spawn(i, argv, env, self.work / f"h{i}.log")
        agent = HostAgent(i, data, url, process)
        self.hosts[i] = agent
        return agent

    def admin(self, n: int = 0) -> httpx.Client:
        return self.managers[n].admin_client()

    def host_client(self, i: int) -> httpx.Client:
        """The manager's admin, talking to host ``i`` directly."""
        m = self.manager
        return httpx.Client(
            base_url=self.hosts[i].url, auth=(m.admin_uuid, m.admin_secret), timeout=5
        )

    def registered(self) -> dict[str, str]:
        """Registered host URL → host id, from the manager."""
        with self.admin() as a:
            r = a.get("/hosts/info", headers={"accept": "application/json"})
            r.raise_for_status()
            return {h["url"]: h["host"] for h in r.json() if "url" in h}

    def host_id(self, i: int) -> str:
        return self.registered()[self.hosts[i].url]

    def wait_hosts_ready(self, seconds: float = 30) -> None:
        """Every host agent registered and holding its lease."""
        urls = {h.url for h in self.hosts.values()}

        def ready() -> bool:
            if not urls <= set(self.registered()):
                return False
            live = asyncio.run(_etcd_values(self.site.etcd_url, "overcast/hosts/"))
            if not urls <= set(live.values()):
                return False
            for i in self.hosts:  # and answering: it holds its lease before it serves
                try:
                    with self.host_client(i) as h:
                        if h.get("/guests/list").status_code != 200:
                            return False
                except httpx.TransportError:
                    return False
            return True

        wait_for(ready, seconds, "hosts to register and hold leases", every=0.1)

    def running_on(self, i: int) -> set[str]:
        """The servers host ``i``'s agent says it runs."""
        with self.host_client(i) as h:
            r = h.get("/guests/list")
            r.raise_for_status()
            return set(r.text.split())

    def stop(self) -> None:
        for cloud in self.managers:
            if cloud.process.poll() is None:
                stop_cloud(cloud)
        for i in list(self.hosts):
            self.site.kill_host(i)


async def _etcd_values(url: str, prefix: str) -> dict[str, str]:
    etcd = Etcd([url])
    try:
        kvs, _ = await etcd.get_prefix(prefix)
        return {kv.key: kv.value for kv in kvs}
    finally:
        await etcd.close()


def guest_keys(site: Site) -> dict[str, str]:
    """server → host id, from the guest keys in etcd."""
    found = asyncio.run(_etcd_values(site.etcd_url, "overcast/guests/"))
    return {k.removeprefix("overcast/guests/"): v for k, v in found.items()}


def guest_copies(site: Site, server: str) -> dict[int, list[int]]:
    """host index → pids of QEMUs running ``server`` in that host's cgroup
    (a frozen QEMU counts: it still holds its image and resumes on thaw).

    A QEMU runs a guest once a virtual CPU of it (a thread named ``CPU
    N/TCG`` or ``CPU N/KVM``) has executed: that leaves out the passing
    processes of ``-daemonize`` and a QEMU still held in prelaunch (``-S``)
    while it is confirmed, or while it fails to take its drive (the image
    lock of a copy running elsewhere refuses it, after its vCPU threads
    exist but before they ever run)."""
    copies: dict[int, list[int]] = {}
    for i in range(1, site.hosts + 1):
        for pid in site.pids(i):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and server.encode() in cmdline and _has_vcpus(pid):
                copies.setdefault(i, []).append(pid)
    return copies


def _has_vcpus(pid: int) -> bool:
    """Whether a vCPU thread of ``pid`` has run at all."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if not (task / "comm").read_text().startswith("CPU "):
                continue
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[11]) + int(fields[12]) > 0:  # utime + stime, in ticks
            return True
    return False
