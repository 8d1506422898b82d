"""OCCI compute create vs ElasticHosts create of the same server, same run.

A real ``overcast serve`` (SQLite, fresh data directory, the test guest as a
library drive imaged onto one drive of the user's) answers on 127.0.0.1.
Each trial pair, interleaved so that drift on a shared machine hits both
alike, creates the same server and destroys it again (not timed):

(a) ElasticHosts: ``POST /servers/create`` with ``name``, ``cpu``, ``mem``,
    ``smp``, ``ide:0:0`` (the drive) and ``nic:0:model virtio``;
(b) OCCI: ``POST /compute/`` in ``application/occi+json`` with the same
    sizes, a storagelink to the drive on ``ide:0:0`` and a networkinterface
    to the public network, until its 201.

b/a is what the OCCI front end adds to a create: its parsing, the checks
against the category definitions, the link targets' look-ups and the
rendering of the answer (goal: at most 1.05, nothing measurable). Before
the trials, one pair is compared key by key to show the servers are the same.

Run: ``.venv/bin/python bench/bench_occi.py [--small]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _common import bench_user, import_guest, keys_of, overcast_server

__all__ = ["Figures", "main", "run"]

LIBRARY = "0c0c0c0c-0000-4000-8000-000000000002"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
EH = "a elastichosts create"
OCCI = "b occi create"
#: The server both APIs create: 1 core of 1 GHz, 128 MiB.
CPU, MEM, SMP = 1000, 128, 1
#: Keys of info that differ between any two servers, whichever API made them.
_OWN = frozenset({"server", "started", "nic:0:mac", "vnc:port"})
#: I/O counters: whatever traffic a bridge carries, not what was created.
_COUNTERS = ("rx", "tx", "rx:packets", "tx:packets")


def _created(info: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in info.items()
        if k not in _OWN and k not in _COUNTERS and not k.endswith((":bytes", ":requests"))
    }


@dataclass
class Figures:
    """Milliseconds per trial, by measure."""

    ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.ms.setdefault(name, []).append(value)

    def p50(self, name: str) -> float:
        return statistics.median(self.ms[name])

    def p95(self, name: str) -> float:
        values = sorted(self.ms[name])
        return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]

    @property
    def ratio(self) -> float:
        """OCCI over ElasticHosts, p50."""
        return self.p50(OCCI) / self.p50(EH)


class _Api:
    def __init__(self, client: httpx.Client, url: str) -> None:
        self.c = client
        self.url = url

    def drive(self) -> str:
        r = self.c.post("/drives/create", content="name bench\nsize 64M\n")
        r.raise_for_status()
        drive = keys_of(r.text)["drive"]
        self.c.post(f"/drives/{drive}/image/{LIBRARY}/gunzip").raise_for_status()
        while "imaging" in keys_of(self.c.get(f"/drives/{drive}/info").text):
            time.sleep(0.02)
        return drive

    def eh_create(self, drive: str) -> tuple[str, float]:
        body = f"name bench\ncpu {CPU}\nmem {MEM}\nsmp {SMP}\nide:0:0 {drive}\nnic:0:model virtio\n"
        began = time.perf_counter()
        r = self.c.post("/servers/create", content=body)
        elapsed = (time.perf_counter() - began) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        return keys_of(r.text)["server"], elapsed

    def occi_create(self, drive: str) -> tuple[str, float]:
        entity = {
            "kind": INFRA + "compute",
            "title": "bench",
            "attributes": {
                "occi.compute.cores": SMP,
                "occi.compute.memory": MEM / 1024,
                "occi.compute.speed": CPU / SMP / 1000,
            },
            "links": [
                {
                    "kind": INFRA + "storagelink",
                    "target": {"location": f"/storage/{drive}", "kind": INFRA + "storage"},
                    "attributes": {"occi.storagelink.deviceid": "ide:0:0"},
                },
                {
                    "kind": INFRA + "networkinterface",
                    "target": {"location": "/network/public", "kind": INFRA + "network"},
                },
            ],
        }
        media = "application/occi+json"
        headers = {"Content-Type": media, "Accept": media}
        began = time.perf_counter()
        r = self.c.post("/compute/", content=json.dumps(entity), headers=headers)
        elapsed = (time.perf_counter() - began) * 1000
        if r.status_code != 201:
            raise RuntimeError(f"OCCI create: {r.status_code} {r.text}")
        return r.headers["location"].rsplit("/", 1)[1], elapsed

    def info(self, server: str) -> dict[str, str]:
        r = self.c.get(f"/servers/{server}/info")
        r.raise_for_status()
        return keys_of(r.text)

    def destroy(self, server: str) -> None:
        r = self.c.post(f"/servers/{server}/destroy")
        if r.status_code != 204:
            raise RuntimeError(f"destroy: {r.status_code} {r.text}")


def _same_server(api: _Api, drive: str) -> None:
    """Both APIs make one and the same server (but for its own ids)."""
    made = []
    for create in (api.eh_create, api.occi_create):
        server, _ms = create(drive)
        made.append(_created(api.info(server)))
        api.destroy(server)
    if made[0] != made[1]:
        raise RuntimeError(f"the two creates differ: {made[0]} vs {made[1]}")


def run(*, trials: int = 20) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="ocb-", dir="/tmp") as tmp:
        data = Path(tmp) / "var"
        data.mkdir()
        import_guest(data, LIBRARY)
        with overcast_server(data) as oc, bench_user(oc, data) as c:
            api = _Api(c, oc.url)
            drive = api.drive()
            _same_server(api, drive)  # and the warm-up of both paths
            for i in range(trials):
                # Alternate which goes first, so neither always follows a destroy.
                order = [(EH, api.eh_create), (OCCI, api.occi_create)]
                for name, create in order if i % 2 == 0 else order[::-1]:
                    server, ms = create(drive)
                    figures.add(name, ms)
                    api.destroy(server)
    return figures


def report(f: Figures) -> None:
    print(f"  {'measure':<24} {'trials':>6} {'p50 ms':>9} {'p95 ms':>9}")
    for name, values in f.ms.items():
        print(f"  {name:<24} {len(values):>6} {f.p50(name):>9.1f} {f.p95(name):>9.1f}")
    print(
        f"\n  b/a (OCCI create vs ElasticHosts create): p50 {f.ratio:.3f}"
        f"  p95 {f.p95(OCCI) / f.p95(EH):.3f}   goal <= 1.05"
    )


def main(small: bool = False) -> Figures:
    print("bench_occi: POST /compute/ (OCCI JSON) vs POST /servers/create, the same server")
    figures = run(trials=3) if small else run()
    report(figures)
    return figures


if __name__ == "__main__":
    main(small="--small" in sys.argv[1:])
