"""Library ("standard") drives: imported by the operator, read by everyone.

``overcast admin drive import-standard`` registers a gzip or raw file; users
see it in ``/drives/list/standard`` and ``/drives/info/standard``, may read
and image it (a gzip one decompresses whether or not the client asks for
``/gunzip``, as libcloud always does), and may not change it.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cloud import Cloud, new_user

EVERYONE = "ffffffff-ffff-ffff-ffff-ffffffffffff"
MiB = 1 << 20


def records(body: str) -> list[dict[str, str]]:
    return [
        {k: v for k, _, v in (line.partition(" ") for line in block.split("\n"))}
        for block in body.strip("\n").split("\n\n")
        if block
    ]


def create(http: httpx.Client, size: str) -> str:
    r = http.post("/drives/create", content=f"name dest\nsize {size}\n")
    assert r.status_code == 200, r.text
    return records(r.text)[0]["drive"]


def read(http: httpx.Client, drive: str, size: int, offset: int = 0) -> bytes:
    r = http.get(f"/drives/{drive}/read/{offset}/{size}")
    assert r.status_code == 200, r.text
    return r.content


def wait_imaged(http: httpx.Client, drive: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "imaging" in http.get(f"/drives/{drive}/info").text:
        assert time.monotonic() < deadline, "imaging did not finish"
        time.sleep(0.01)


def assert_error(r: httpx.Response, status: int, kind: str, case: object = None) -> None:
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.headers["x-elastic-error"] == kind, case


@dataclass
class Library:
    gz: str
    raw: str
    gz_content: bytes
    gz_file: bytes
    raw_content: bytes


def import_standard(cloud: Cloud, file: Path, *options: str) -> dict[str, str]:
    done = cloud.overcast("admin", "drive", "import-standard", str(file), *options)
    assert done.returncode == 0, done.stderr
    return records(done.stdout)[0]


@pytest.fixture(scope="module")
def library(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Library:
    """One gzip and one raw library drive, imported with the CLI."""
    folder = tmp_path_factory.mktemp("library")
    gz_content = os.urandom(200_000) + bytes(MiB) + os.urandom(10_000)
    gz_path = folder / "system.img.gz"
    gz_path.write_bytes(gzip.compress(gz_content))
    raw_content = os.urandom(300_000)
    raw_path = folder / "installer.iso"
    raw_path.write_bytes(raw_content)

    gz = import_standard(cloud, gz_path, "--name", "Debian 12 (gzip)")
    raw = import_standard(cloud, raw_path, "--name", "Installer CD", "--media", "cdrom")
    assert gz["name"] == "Debian 12 (gzip)"
    assert (gz["format"], gz["media"]) == ("gzip", "disk")
    assert gz["rawsize"] == str(len(gz_content))
    assert gz["size"] == str(gz_path.stat().st_size)
    assert (raw["format"], raw["media"]) == ("raw", "cdrom")
    assert raw["rawsize"] == raw["size"] == str(len(raw_content))
    return Library(gz["drive"], raw["drive"], gz_content, gz_path.read_bytes(), raw_content)


@pytest.fixture
def stranger(cloud: Cloud) -> Iterator[httpx.Client]:
    with new_user(cloud, "stranger") as client:
        yield client


def test_listed_for_every_user(
    library: Library, user: httpx.Client, stranger: httpx.Client
) -> None:
    for http in (user, stranger):
        listed = http.get("/drives/list/standard").text.split()
        assert {library.gz, library.raw} <= set(listed)
        as_json = http.post("/drives/list/standard", headers={"Accept": "application/json"})
        assert {"drive": library.gz} in as_json.json()
        # Not among the user's own drives.
        assert http.get("/drives/list").text == ""

    infos = {r["drive"]: r for r in records(user.get("/drives/info/standard").text)}
    gz = infos[library.gz]
    assert gz["name"] == "Debian 12 (gzip)"
    assert (gz["media"], gz["format"]) == ("disk", "gzip")
    assert gz["rawsize"] == str(len(library.gz_content))
    assert gz["size"] == str(len(library.gz_file))
    assert gz["readers"] == EVERYONE
    assert gz["claim:type"] == "shared"
    assert "user" not in gz
    raw = infos[library.raw]
    assert (raw["media"], raw["format"], raw["rawsize"]) == ("cdrom", "raw", "300000")

    as_json = stranger.get("/drives/info/standard", headers={"Accept": "application/json"}).json()
    by_uuid = {d["drive"]: d for d in as_json}
    assert by_uuid[library.gz]["rawsize"] == len(library.gz_content)
    assert by_uuid[library.gz]["size"] == len(library.gz_file)
    assert by_uuid[library.raw]["media"] == "cdrom"

    one = records(stranger.get(f"/drives/{library.gz}/info").text)[0]
    assert one == gz


def test_readable_by_every_user(
    library: Library, user: httpx.Client, stranger: httpx.Client
) -> None:
    for http in (user, stranger):
        # The stored bytes: the gzip file as imported, the raw image as is.
        assert read(http, library.gz, len(library.gz_file)) == library.gz_file
        assert read(http, library.raw, 1000, offset=299_000) == library.raw_content[299_000:]


@pytest.mark.parametrize("suffix", ["", "/gunzip"])
def test_gzip_library_drive_images_decompressed(
    library: Library, user: httpx.Client, suffix: str
) -> None:
    dest = create(user, "2M")
    r = user.post(f"/drives/{dest}/image/{library.gz}{suffix}")
    assert r.status_code == 204, r.text
    wait_imaged(user, dest)
    size = len(library.gz_content)
    assert read(user, dest, size) == library.gz_content
    assert read(user, dest, 2 * MiB - size, offset=size) == bytes(2 * MiB - size)


@pytest.mark.parametrize("suffix", ["", "/gunzip"])
def test_raw_library_drive_images_as_is(library: Library, user: httpx.Client, suffix: str) -> None:
    dest = create(user, "1M")
    assert user.post(f"/drives/{dest}/image/{library.raw}{suffix}").status_code == 204
    wait_imaged(user, dest)
    assert read(user, dest, len(library.raw_content)) == library.raw_content


def test_image_onto_a_drive_smaller_than_rawsize_is_400(
    library: Library, user: httpx.Client
) -> None:
    # Larger than the gzip file, smaller than what it expands to.
    dest = create(user, "1M")
    assert_error(user.post(f"/drives/{dest}/image/{library.gz}/gunzip"), 400, "usage")
    assert "imaging" not in user.get(f"/drives/{dest}/info").text


def test_users_cannot_change_library_drives(
    cloud: Cloud, library: Library, user: httpx.Client, admin: httpx.Client
) -> None:
    mine = create(user, "2M")
    for http in (user, admin):
        for drive in (library.gz, library.raw):
            for path in (
                f"/drives/{drive}/destroy",
                f"/drives/{drive}/set",
                f"/drives/{drive}/write",
                f"/drives/{drive}/write/0",
                f"/drives/{drive}/image/{mine}",
            ):
                assert_error(http.post(path, content=b"name mine\n"), 404, "missing", path)
    assert (cloud.data / "drives" / library.gz).read_bytes() == library.gz_file
    info = records(user.get(f"/drives/{library.gz}/info").text)[0]
    assert info["name"] == "Debian 12 (gzip)"


def test_bad_imports_register_nothing(cloud: Cloud, tmp_path: Path, user: httpx.Client) -> None:
    before = set(user.get("/drives/list/standard").text.split())
    files = set(os.listdir(cloud.data / "drives"))
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(os.urandom(100_000))[:-100])
    for args in (
        (str(corrupt), "--name", "corrupt"),
        (str(corrupt), "--name", ""),
    ):
        done = cloud.overcast("admin", "drive", "import-standard", *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: "), done.stderr
    assert set(user.get("/drives/list/standard").text.split()) == before
    # Nothing left behind, not even a partial copy.
    assert set(os.listdir(cloud.data / "drives")) == files
