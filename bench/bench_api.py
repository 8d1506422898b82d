"""API throughput: ``GET /drives/D/info`` and ``GET /drives/info`` under wrk,
side by side with a bare Starlette app (the framework ceiling) in the same run.

A real ``overcast serve`` (SQLite, fresh data directory) answers on
127.0.0.1. One user owns 10,000 drives and another 100; their rows are
inserted directly into the store before the server starts (through the API
each drive would cost a ``qemu-img`` run). The bare app runs under the same
uvicorn settings, so overcast/bare is the share of the framework's ceiling
that overcast reaches: auth, two store reads, rendering.

Run: ``.venv/bin/python bench/bench_api.py [--small]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import WrkResult, bare_server, overcast_server, populate, run_wrk

__all__ = ["Measure", "main", "run"]


@dataclass(frozen=True)
class Measure:
    label: str
    connections: int
    seconds: int
    result: WrkResult


def run(
    *, many: int = 10_000, few: int = 100, seconds: int = 6, heavy_seconds: int = 10
) -> tuple[list[Measure], Measure]:
    """Every wrk run, overcast's and the bare app's; returns (overcast runs, ceiling).

    The bare app is measured before and after overcast's runs (drift on a
    shared machine shows as a gap between the two); the better one is the
    ceiling the ratios use.
    """
    with tempfile.TemporaryDirectory(prefix="overcast-bench-") as tmp:
        data = Path(tmp) / "var"
        started = time.monotonic()
        big, small = populate(data, [many, few])
        print(
            f"  store: {many} drive rows for user A and {few} for user B, "
            f"inserted directly with overcast.store.drives.insert_drive "
            f"({time.monotonic() - started:.1f} s; no image files, info never reads them)"
        )
        with overcast_server(data) as oc, bare_server(Path(tmp)) as bare:
            info = f"{oc.url}/drives/info"
            print(_HEADER)
            before = _measure("bare Starlette GET / (before)", bare.url + "/", 4, seconds, None)
            runs = [
                _measure(
                    "overcast GET /drives/D/info",
                    f"{oc.url}/drives/{big.drives[0]}/info",
                    4,
                    seconds,
                    big.authorization,
                ),
                _measure(
                    f"overcast GET /drives/info ({few})", info, 2, seconds, small.authorization
                ),
                _measure(
                    f"overcast GET /drives/info ({many})", info, 2, heavy_seconds, big.authorization
                ),
            ]
            after = _measure("bare Starlette GET / (after)", bare.url + "/", 4, seconds, None)
    ceiling = max(before, after, key=lambda m: m.result.rps)
    return runs, ceiling


_HEADER = (
    f"  {'endpoint':<38} {'conns':>5} {'secs':>4} {'requests':>9} {'req/s':>9} "
    f"{'p50 ms':>9} {'p99 ms':>9} {'errors':>6}"
)


def _measure(label: str, url: str, conns: int, secs: int, authorization: str | None) -> Measure:
    """One wrk run, printed as soon as it is done; failed requests void the figures."""
    r = run_wrk(url, seconds=secs, connections=conns, authorization=authorization)
    print(
        f"  {label:<38} {conns:>5} {secs:>4} {r.requests:>9} "
        f"{r.rps:>9.1f} {r.p50_ms:>9.2f} {r.p99_ms:>9.2f} {r.errors:>6}",
        flush=True,
    )
    if r.errors or not r.requests:
        raise RuntimeError(f"{label}: {r.errors} of {r.requests} requests failed; figures void")
    return Measure(label, conns, secs, r)


def report(runs: list[Measure], ceiling: Measure) -> None:
    c = ceiling.result
    print(f"\n  ratios overcast / bare (ceiling: {ceiling.label.strip()}, {c.rps:.0f} req/s)")
    print(f"  {'endpoint':<38} {'req/s ratio':<17} {'p50 ratio':>10} {'p99 ratio':>10}")
    for m in runs:
        r = m.result
        share = r.rps / c.rps
        print(
            f"  {m.label:<38} {share:>8.4f} = 1/{1 / share:<6.0f} "
            f"{r.p50_ms / c.p50_ms:>9.1f}x {r.p99_ms / c.p99_ms:>9.1f}x"
        )


def main(small: bool = False) -> tuple[list[Measure], Measure]:
    print("bench_api: overcast serve (SQLite) vs bare Starlette, same uvicorn settings; wrk -t1")
    if small:
        runs, ceiling = run(many=100, few=10, seconds=2, heavy_seconds=2)
    else:
        runs, ceiling = run()
    report(runs, ceiling)
    return runs, ceiling


if __name__ == "__main__":
    main(small="--small" in sys.argv[1:])
