"""Which callback URLs users may give, and the settings behind it.

The address checks run on IP literals and ``localhost`` only (resolved from
/etc/hosts): no test here sends a packet anywhere, not even a DNS query.
One cloud runs with the default (strict) setting to show the API's answer.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud import Cloud, new_user, start_cloud, stop_cloud
from overcast.config import load_settings
from overcast.events.callbacks import check_callback_url, public_address
from overcast.model.errors import UsageError
from overcast.model.keys import parse_time

PRIVATE = [
    "http://127.0.0.1/x",
    "http://127.8.9.10:8080/x",
    "http://localhost/x",
    "http://[::1]/x",
    "http://10.1.2.3/x",
    "http://172.16.0.1/x",
    "http://192.168.1.1/x",
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/x",
    "http://[::ffff:127.0.0.1]/x",
    "http://0.0.0.0/x",
    "http://224.0.0.1/x",
    "http://100.64.0.1/x",
]
MALFORMED = ["ftp://8.8.8.8/x", "http:///x", "http://[::1/x", "http://8.8.8.8:99999/x", "file:///"]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UsageError, match="not a public address"):
        asyncio.run(check_callback_url(url, allow_private=False))
    asyncio.run(check_callback_url(url, allow_private=True))


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_are_refused_always(url: str) -> None:
    for allow in (False, True):
        with pytest.raises(UsageError):
            asyncio.run(check_callback_url(url, allow_private=allow))


@pytest.mark.parametrize("url", ["http://8.8.8.8/hook", "https://[2001:4860::8888]:8443/h"])
def test_public_addresses_pass(url: str) -> None:
    asyncio.run(check_callback_url(url, allow_private=False))


@given(st.ip_addresses())
def test_public_address_agrees_with_ipaddress(ip: object) -> None:
    import ipaddress

    addr = ipaddress.ip_address(str(ip))
    expected = addr.is_global and not addr.is_multicast
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        expected = addr.ipv4_mapped.is_global and not addr.ipv4_mapped.is_multicast
    assert public_address(str(ip)) is expected


@given(st.text(max_size=40))
def test_parse_time_refuses_or_gives_a_sane_time(text: str) -> None:
    try:
        seconds = parse_time("from", text)
    except UsageError:
        return
    assert 0 <= seconds < 1e11


def test_parse_time_formats() -> None:
    assert parse_time("t", "1700000000.5") == 1700000000.5
    assert parse_time("t", "2026-01-01T00:00:00") == 1767225600.0
    assert parse_time("t", "2026-01-01T01:00:00+01:00") == 1767225600.0
    for bad in ["nan", "inf", "-1", "1e9", "yesterday", ""]:
        with pytest.raises(UsageError):
            parse_time("t", bad)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OVERCAST_CALLBACK_PRIVATE", "yes")
    monkeypatch.setenv("OVERCAST_BILLING_INTERVAL", "60")
    settings = load_settings(data=tmp_path)
    assert settings.callback_private is True and settings.billing_interval == 60.0
    monkeypatch.setenv("OVERCAST_BILLING_INTERVAL", "0")
    with pytest.raises(ValueError, match="billing_interval"):
        load_settings(data=tmp_path)
    monkeypatch.setenv("OVERCAST_BILLING_INTERVAL", "60")
    monkeypatch.setenv("OVERCAST_CALLBACK_PRIVATE", "maybe")
    with pytest.raises(ValueError, match="callback_private"):
        load_settings(data=tmp_path)
    monkeypatch.delenv("OVERCAST_CALLBACK_PRIVATE")
    (tmp_path / "overcast.toml").write_text("callback_privat = true\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_settings(data=tmp_path)


@pytest.fixture(scope="module")
def strict() -> Iterator[Cloud]:
    """A cloud with the default setting: callbacks only to public addresses."""
    with tempfile.TemporaryDirectory(prefix="ocs-", dir="/tmp") as tmp:
        c = start_cloud(Path(tmp) / "var", env={"OVERCAST_CALLBACK_PRIVATE": "false"})
        try:
            yield c
        finally:
            stop_cloud(c)


def _create(http: httpx.Client, hook: str | None) -> httpx.Response:
    extra = f"callback:exit {hook}\n" if hook else ""
    return http.post("/servers/create", content=f"name cb\ncpu 500\nmem 64\n{extra}")


def test_strict_cloud_refuses_private_callbacks_and_changes_nothing(strict: Cloud) -> None:
    with new_user(strict) as user:
        for hook in ["http://127.0.0.1:9/h", "http://169.254.169.254/", "http://[::1]/h"]:
            r = _create(user, hook)
            assert r.status_code == 400, r.text
            assert r.headers["x-elastic-error"] == "usage"
            assert "public address" in r.text
        assert user.get("/servers/list").text == ""
        # Nor may a running server's callback be changed to one.
        r = _create(user, None)
        assert r.status_code == 200, r.text
        server = r.text.split("server ", 1)[1].split("\n", 1)[0]
        r = user.post(f"/servers/{server}/set", content="callback:exit http://10.0.0.1/h\n")
        assert r.status_code == 400, r.text
        info = user.get(f"/servers/{server}/info").text
        assert "callback:exit" not in info
        assert user.post(f"/servers/{server}/destroy").status_code == 204


def test_strict_cloud_lets_admins_call_back_anywhere(strict: Cloud) -> None:
    """How a host reports exits to its manager: an admin's callback to it."""
    with strict.admin_client() as a:
        r = _create(a, "http://127.0.0.1:9/manager")
        assert r.status_code == 200, r.text
        server = r.text.split("server ", 1)[1].split("\n", 1)[0]
        assert a.post(f"/servers/{server}/destroy").status_code == 204
