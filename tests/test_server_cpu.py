"""``cpu`` (MHz) becomes a CPU-time quota on the guest's QEMU process."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from cloud import Cloud
from overcast.host.cpulimit import PERIOD_US, CpuLimits


def _info(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    return dict(line.split(" ", 1) for line in r.text.splitlines())


def _throttled(group: Path) -> int:
    stats = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
    return int(stats["nr_throttled"])


GUEST = Path(__file__).resolve().parents[1] / "build" / "guest" / "guest.img.gz"
LIBRARY = "6f766572-6361-4573-a774-67756573740a"


def _boot_drive(cloud: Cloud, user: httpx.Client) -> str:
    """A drive of the user's with the test guest on it."""
    done = cloud.overcast(
        "admin", "drive", "import-standard", str(GUEST), "--name", "guest",
        "--uuid", LIBRARY, "--exist-ok",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    drive = _info(user.post("/drives/create", content="name boot\nsize 64M\n"))["drive"]
    assert user.post(f"/drives/{drive}/image/{LIBRARY}/gunzip").status_code == 204
    deadline = time.monotonic() + 30
    while "imaging" in _info(user.get(f"/drives/{drive}/info")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return drive


def test_cpu_is_a_quota_on_the_guest(cloud: Cloud, user: httpx.Client) -> None:
    limits = CpuLimits("oc-guests")
    assert limits.base is not None, "this machine has a cpu cgroup (v1 or v2)"
    drive = _boot_drive(cloud, user)
    config = f"name capped\ncpu 500\nmem 64\nide:0:0 {drive}\nboot ide:0:0\n"
    server = _info(user.post("/servers/create", content=config))
    uuid = server["server"]
    group = limits.base / uuid
    try:
        pid = (cloud.data / "run" / uuid / "qemu.pid").read_text().strip()
        assert pid in (group / "cgroup.procs").read_text().split()
        if limits.version == 1:
            assert (group / "cpu.cfs_quota_us").read_text().strip() == str(PERIOD_US // 4)
        else:
            assert (group / "cpu.max").read_text().split() == [str(PERIOD_US // 4), str(PERIOD_US)]
        # Booting (decompressing its kernel) wants more than a quarter core.
        deadline = time.monotonic() + 10
        while _throttled(group) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _throttled(group) > 0
    finally:
        assert user.post(f"/servers/{uuid}/destroy").status_code == 204
    assert not group.exists()


def test_cpu_set_on_a_running_server_changes_its_quota(cloud: Cloud, user: httpx.Client) -> None:
    limits = CpuLimits("oc-guests")
    assert limits.base is not None
    server = _info(user.post("/servers/create", content="name live\ncpu 1000\nmem 64\nsmp 1\n"))
    uuid = server["server"]
    quota = "cpu.cfs_quota_us" if limits.version == 1 else "cpu.max"
    try:
        assert (limits.base / uuid / quota).read_text().split()[0] == str(PERIOD_US // 2)
        changed = _info(user.post(f"/servers/{uuid}/set", content="cpu 1500\n"))
        assert changed["cpu"] == "1500" and changed["status"] == "active"
        assert (limits.base / uuid / quota).read_text().split()[0] == str(PERIOD_US * 3 // 4)
    finally:
        assert user.post(f"/servers/{uuid}/destroy").status_code == 204
