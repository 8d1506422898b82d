"""A cloud that holds an etcd lease (issue 7): guest keys, and a fence.

``overcast serve`` with ``etcd`` set, against a private etcd: each running
guest has its key ``overcast/guests/<server>`` on the host's lease while it
runs and not after; the watchdog runs beside the server; when etcd dies
the host fences itself before the lease's TTL is over, and the guest's end
is reported as ``fenced`` (not the guest's doing).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from cloud import start_cloud, stop_cloud
from etcd import running_etcd
from overcast.store.etcd import Etcd
from qemus import alive
from test_server_restart import _wait
from test_servers import records

TTL = 3


async def _key(url: str, server: str) -> str | None:
    etcd = Etcd([url])
    try:
        kv = await etcd.get(f"overcast/guests/{server}")
        return None if kv is None else kv.value
    finally:
        await etcd.close()


def test_guest_keys_and_a_fence_when_etcd_dies() -> None:
    with tempfile.TemporaryDirectory(prefix="ocl-", dir="/tmp") as tmp, ExitStack() as etcd:
        data = Path(tmp) / "var"
        url = etcd.enter_context(running_etcd())
        cloud = start_cloud(
            data,
            env={
                "OVERCAST_ETCD": url,
                "OVERCAST_HOST_ID": "h-test",
                "OVERCAST_LEASE_TTL": str(TTL),
            },
        )
        try:
            _wait(lambda: (data / "watchdog.lock").exists(), 10, "the watchdog")
            with cloud.admin_client() as a:
                r = a.post("/servers/create", content="name leased\ncpu 500\nmem 64\n")
                assert r.status_code == 200, r.text
                server = records(r.text)[0]["server"]
                assert asyncio.run(_key(url, server)) == "h-test"
                assert a.post(f"/servers/{server}/stop").status_code == 204
                assert asyncio.run(_key(url, server)) is None

                r = a.post("/servers/create", content="name fenced\ncpu 500\nmem 64\n")
                assert r.status_code == 200, r.text
                doomed = records(r.text)[0]["server"]
                pid = int((data / "run" / doomed / "qemu.pid").read_text())
                killed = time.monotonic()
                etcd.close()  # etcd is gone: no renewal can succeed
                _wait(lambda: not alive(pid), TTL + 2, "the fence")
                assert time.monotonic() - killed < TTL, "fenced only after the TTL"
                deadline = time.monotonic() + 10
                while True:
                    events = records(a.get("/events/list").text)
                    ends = [e for e in events if e["server"] == doomed]
                    if ends or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                assert [e["reason"] for e in ends] == ["fenced"]
                # No lease, no guests: a create is refused, nothing is left.
                r = a.post("/servers/create", content="name nope\ncpu 500\nmem 64\n")
                assert r.status_code in (409, 500), r.text
                assert a.get("/servers/list").text.strip() == ""
        finally:
            stop_cloud(cloud)
