"""A throwaway etcd for the tests (Debian's ``etcd-server``).

Loaded as a pytest plugin by ``tests/conftest.py``. ``etcd_url`` is a
session-scoped fixture: one etcd member in a temporary folder, client and
peer ports free ports on 127.0.0.1, stopped and removed when the session
ends. ``running_etcd()`` is the context manager behind it. A missing
binary fails the fixture, never skips it: ``bash scripts/setup.sh test``
installs it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud import free_port

__all__ = ["etcd_url", "running_etcd"]


@contextlib.contextmanager
def running_etcd() -> Iterator[str]:
    binary = shutil.which("etcd")
    if binary is None:
        raise RuntimeError("etcd is not installed: run bash scripts/setup.sh test")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    with tempfile.TemporaryDirectory(prefix="etcd-") as tmp:
        log = Path(tmp) / "etcd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    "--name",
                    "test",
                    "--data-dir",
                    str(Path(tmp) / "data"),
                    "--listen-client-urls",
                    url,
                    "--advertise-client-urls",
                    url,
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-cluster",
                    f"test=http://127.0.0.1:{peer}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"etcd exited:\n{log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not answer:\n{log.read_text()}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    with running_etcd() as url:
        yield url
