"""VNC through the API: a password makes a console on the host address;
without one there is none."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from cloud import Cloud


def _info(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return dict(line.split(" ", 1) for line in r.text.splitlines())


def _auth_types(port: int) -> bytes:
    """The security types a VNC server offers (RFB 3.8 handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        version = s.recv(12)
        assert version.startswith(b"RFB 003."), version
        s.sendall(b"RFB 003.008\n")
        count = s.recv(1)[0]
        return s.recv(count)


def test_vnc_password_gives_a_locked_console(cloud: Cloud, user: httpx.Client) -> None:
    config = "name console\ncpu 500\nmem 64\nvnc auto\nvnc:password s3cret\n"
    server = _info(user.post("/servers/create", content=config))
    try:
        assert server["vnc:ip"] == "127.0.0.1"
        port = int(server["vnc:port"])
        assert _auth_types(port) == b"\x02"  # VNC authentication only
        pid = (cloud.data / "run" / server["server"] / "qemu.pid").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"qemu-system" in cmdline
        assert b"s3cret" not in cmdline  # set over QMP, never on the command line
        # A running server's password may change (API.md); it is applied now.
        changed = _info(user.post(f"/servers/{server['server']}/set", content="vnc:password n3w\n"))
        assert changed["vnc:password"] == "n3w" and changed["vnc:port"] == str(port)
        assert _auth_types(port) == b"\x02"
    finally:
        assert user.post(f"/servers/{server['server']}/destroy").status_code == 204


def test_no_password_no_console(user: httpx.Client) -> None:
    server = _info(user.post("/servers/create", content="name quiet\ncpu 500\nmem 64\n"))
    try:
        assert "vnc:port" not in server and "vnc:ip" not in server
    finally:
        assert user.post(f"/servers/{server['server']}/destroy").status_code == 204
