"""The benchmarks in bench/ still run: each one's core, with tiny parameters,
must produce sane figures (so that ``make bench`` does not rot unnoticed).

These check that the figures exist and are plausible, not how fast anything
is: the machine is shared and the sizes are too small to mean much.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    # bench/ is not a package; its scripts import their helper as ``_common``.
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


def test_wrk_output_is_parsed_with_its_units(monkeypatch: pytest.MonkeyPatch) -> None:
    common = _bench(monkeypatch, "_common")
    output = """Running 2s test @ http://127.0.0.1:1/
  1 threads and 4 connections
  Latency Distribution
     50%  635.00us
     75%  712.00us
     90%    1.02ms
     99%    2.01s
  12345 requests in 2.00s, 1.23MB read
  Non-2xx or 3xx responses: 5
  Socket errors: connect 1, read 0, write 0, timeout 2
Requests/sec:   6172.50
Transfer/sec:    615.00KB
"""
    r = common.parse_wrk(output)
    assert (r.requests, r.rps, r.errors) == (12345, 6172.5, 8)
    assert r.p50_ms == pytest.approx(0.635)
    assert r.p99_ms == pytest.approx(2010.0)


def test_api_bench_runs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_api = _bench(monkeypatch, "bench_api")
    runs, ceiling = bench_api.main(small=True)
    assert [m.label for m in runs] == [
        "overcast GET /drives/D/info",
        "overcast GET /drives/info (10)",
        "overcast GET /drives/info (100)",
    ]
    for m in [*runs, ceiling]:
        r = m.result
        assert r.requests > 0 and r.rps > 0 and r.errors == 0, m
        assert 0 < r.p50_ms <= r.p99_ms, m
    # A constant answer from the same framework must beat any real call.
    assert all(ceiling.result.rps > m.result.rps for m in runs)


def test_transfer_bench_runs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_transfer = _bench(monkeypatch, "bench_transfer")
    figures = bench_transfer.main(small=True)
    assert figures.size == 16 << 20
    for step in ("cp", "cp+fsync", "upload", "gzip upload", "cat", "download"):
        assert figures.seconds[step] > 0 and figures.mb_s(step) > 0, step
    assert 0 < figures.gzip_bytes < figures.size
    assert list(figures.rss_kib) == [
        "after start",
        "after upload",
        "after gzip upload",
        "after downloads",
    ]
    peaks = list(figures.rss_kib.values())
    assert peaks[0] > 0 and peaks == sorted(peaks)  # a high-water mark never falls


def test_servers_bench_runs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_servers = _bench(monkeypatch, "bench_servers")
    figures = bench_servers.main(small=True)
    assert list(figures.ms) == ["a api create", "b raw qemu"]
    for name, values in figures.ms.items():
        assert len(values) == 3 and all(v > 0 for v in values), name
        assert 0 < figures.p50(name) <= figures.p95(name), name
    assert figures.concurrent == 2 and figures.burst_ms > 0


def test_events_bench_runs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_events = _bench(monkeypatch, "bench_events")
    f = bench_events.main(small=True)
    positive = [bench_events.STOP, bench_events.EXIT, bench_events.RAW, bench_events.RAW_ARRIVED]
    assert sorted(f.ms) == sorted([*positive, bench_events.AFTER])
    assert all(len(values) == 3 for values in f.ms.values())
    for name in positive:
        assert all(v > 0 for v in f.ms[name]), name
        assert 0 < f.p50(name) <= f.p99(name), name
    # From the stop's reply the callback may even have arrived already (the
    # event is committed before the reply goes out), so only the sum holds.
    for exit_ms, stop_ms, after_ms in zip(
        f.ms[bench_events.EXIT], f.ms[bench_events.STOP], f.ms[bench_events.AFTER], strict=True
    ):
        assert exit_ms == pytest.approx(stop_ms + after_ms)
    assert f.callback_bytes > 100
    # Every queued event acknowledged at the first try, and each one's
    # webhook-id seen by the receiver.
    assert (f.events, f.delivered, f.received, f.retried) == (50, 50, 50, 0)
    assert f.event_bytes > 100 and f.concurrency == bench_events.CONCURRENCY > 0
    assert f.deliver_s > 0 and f.deliver_rate > 0
    assert len(f.raw_s) == 2 and all(s > 0 for s in f.raw_s) and f.raw_rate > 0


def test_occi_bench_runs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_occi = _bench(monkeypatch, "bench_occi")
    figures = bench_occi.main(small=True)
    assert list(figures.ms) == [bench_occi.EH, bench_occi.OCCI]
    for name, values in figures.ms.items():
        assert len(values) == 3 and all(v > 0 for v in values), name
        assert 0 < figures.p50(name) <= figures.p95(name), name
    assert figures.ratio > 0


def test_placement_bench_runs_small(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_placement = _bench(monkeypatch, "bench_placement")
    f = bench_placement.main(small=True)
    assert f.placed + f.refused == f.guests == 300 and f.placed > 0
    assert f.place_s > 0 and f.floor_s > 0 and f.rate > 0
