"""Test fixtures: a real ``overcast serve`` on loopback and fresh users.

The server is a subprocess started as an operator would start it; each test
gets a new user of its own (via the admin API), so tests share one server
yet never see each other's objects.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

__all__ = ["Cloud", "admin", "cloud", "free_port", "new_user", "start_cloud", "user"]


def free_port() -> int:
    return free_port_on()


@dataclass
class Cloud:
    url: str
    data: Path
    process: subprocess.Popen[bytes]
    admin_uuid: str
    admin_secret: str
    log: Path

    def client(self, uuid: str, secret: str, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(uuid, secret), timeout=30, **kwargs)  # type: ignore[arg-type]

    def admin_client(self) -> httpx.Client:
        return self.client(self.admin_uuid, self.admin_secret)

    def overcast(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``overcast`` command against this cloud's data directory."""
        return subprocess.run(
            [sys.executable, "-m", "overcast.cli", *args[:1], "--data", str(self.data), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
        )


def _overcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "overcast.cli", *args]


#: Settings every test cloud runs with: the tests' callback receivers
#: listen on loopback, which a real cloud refuses by default.
TEST_SETTINGS = {"OVERCAST_CALLBACK_PRIVATE": "true"}


def free_port_on(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def start_cloud(
    data: Path,
    store: str | None = None,
    env: dict[str, str] | None = None,
    *,
    address: str = "127.0.0.1",
    port: int | None = None,
) -> Cloud:
    """``overcast serve`` on a free port of ``address`` (loopback, or a test
    network's address); ``env`` adds or overrides ``OVERCAST_*`` settings
    (see :data:`TEST_SETTINGS`)."""
    port = port or free_port_on(address)
    log = data.parent / f"{data.name}.log"
    cmd = _overcast("serve", "--data", str(data), "--listen", f"{address}:{port}")
    if store:
        cmd += ["--store", store]
    with open(log, "ab") as out:  # a restarted cloud's log goes on
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **TEST_SETTINGS, **(env or {})},
        )
    url = f"http://{address}:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"overcast serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/drives/list", timeout=1).status_code == 401:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"overcast serve did not answer:\n{log.read_text()}")
        time.sleep(0.05)
    creds = dict(line.split(" ", 1) for line in (data / "admin.txt").read_text().splitlines())
    return Cloud(url, data, proc, creds["uuid"], creds["secret"], log)


def stop_cloud(c: Cloud) -> None:
    c.process.send_signal(signal.SIGTERM)
    try:
        c.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        c.process.kill()
        c.process.wait()


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    c = start_cloud(tmp_path_factory.mktemp("cloud") / "var")
    os.environ.setdefault("OVERCAST_TEST_CLOUD", c.url)
    yield c
    stop_cloud(c)


def new_user(c: Cloud, name: str = "tester") -> httpx.Client:
    with c.admin_client() as a:
        r = a.post("/users/create", content=f"name {name}\n")
        r.raise_for_status()
        keys = dict(line.split(" ", 1) for line in r.text.splitlines())
    return c.client(keys["user"], keys["secret"])


@pytest.fixture
def user(cloud: Cloud) -> Iterator[httpx.Client]:
    """An httpx client authenticated as a brand-new user."""
    with new_user(cloud) as client:
        yield client


@pytest.fixture
def admin(cloud: Cloud) -> Iterator[httpx.Client]:
    with cloud.admin_client() as client:
        yield client
