"""Downloads and archive unpacking against a real HTTP server on 127.0.0.1 (no outside host is ever contacted).

The server (``http.server`` in a thread, random port) serves files built here, among them archives of generated
JPEGs, and can misbehave on request: cut a transfer in the middle, stall, ignore ``Range``, answer an error.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from csa_rerank import datasets, download
from csa_rerank.download import ArchiveError, DownloadError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# the test server
@dataclass
class Route:
    """What the server answers for one path.  The first ``cut_first`` requests get half the body and a closed
    connection, the next ``stall_first`` half the body and then silence; the first ``fail_first`` get HTTP
    ``status`` (all of them when ``fail_first`` is None and ``status`` is not 200); the first ``corrupt_first``
    get the whole body with one byte changed (a different one each time)."""

    body: bytes = b""
    status: int = 200
    fail_first: int | None = None
    honour_range: bool = True
    cut_first: int = 0
    stall_first: int = 0
    corrupt_first: int = 0
    hits: int = 0


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        route = server.routes.get(self.path)
        server.requests.append((self.path, self.headers.get("Range")))
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        if route.status != 200 and (route.fail_first is None or route.hits <= route.fail_first):
            self.send_error(route.status)
            return
        body, start = route.body, 0
        if route.hits <= route.corrupt_first:
            body = bytearray(body)
            body[route.hits] ^= 0xFF
            body = bytes(body)
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if requested and route.honour_range:
            start = int(requested.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if route.hits <= route.cut_first + route.stall_first:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            if route.hits > route.cut_first:
                time.sleep(2.0)  # far beyond the client's timeout in the stall test
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format, *args):  # keep the test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up the teardown


@dataclass
class LocalServer:
    """The running test server: its base URL, its routes, and the (path, Range header) of every request."""

    base_url: str
    routes: dict[str, Route]
    requests: list[tuple[str, str | None]]

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def serve(self, path: str, body: bytes = b"", **behaviour) -> str:
        self.routes[path] = Route(body=body, **behaviour)
        return self.url(path)


@pytest.fixture
def server(monkeypatch):
    # a proxy configured in the environment must not intercept requests to the local server
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield LocalServer(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.routes, httpd.requests)
    httpd.shutdown()
    httpd.server_close()


def _bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------------------
# fetch
def test_cut_transfer_resumes_with_range(server, tmp_path):
    body = _bytes(300_000)
    url = server.serve("/file.bin", body, cut_first=1)
    dest = download.fetch(url, tmp_path / "file.bin", backoff=0, log=io.StringIO())
    assert dest.read_bytes() == body
    assert server.requests == [("/file.bin", None), ("/file.bin", "bytes=150000-")]
    assert _leftovers(tmp_path) == ["file.bin"]


def test_part_left_by_killed_process_is_resumed(server, tmp_path):
    body = _bytes(50_000)
    url = server.serve("/file.bin", body)
    (tmp_path / "file.bin.part").write_bytes(body[:12_345])
    download.fetch(url, tmp_path / "file.bin", backoff=0, log=io.StringIO())
    assert (tmp_path / "file.bin").read_bytes() == body
    assert server.requests == [("/file.bin", "bytes=12345-")]
    assert _leftovers(tmp_path) == ["file.bin"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = _bytes(50_000)
    url = server.serve("/file.bin", body, honour_range=False)
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes that must not stay in front")
    log = io.StringIO()
    download.fetch(url, tmp_path / "file.bin", backoff=0, log=log)
    assert (tmp_path / "file.bin").read_bytes() == body
    assert "ignored the resume request" in log.getvalue()


@pytest.mark.parametrize("extra", [b"", b"junk beyond the end"])
def test_range_not_satisfiable(server, tmp_path, extra):
    """416: a complete .part (killed before its rename) is kept as is; a longer one is downloaded again."""
    body = _bytes(20_000)
    url = server.serve("/file.bin", body)
    (tmp_path / "file.bin.part").write_bytes(body + extra)
    download.fetch(url, tmp_path / "file.bin", backoff=0, log=io.StringIO())
    assert (tmp_path / "file.bin").read_bytes() == body
    assert len(server.requests) == (1 if not extra else 2)


def test_stalled_transfer_times_out_and_resumes(server, tmp_path):
    body = _bytes(100_000)
    url = server.serve("/file.bin", body, stall_first=1)
    download.fetch(url, tmp_path / "file.bin", timeout=0.3, backoff=0, log=io.StringIO())
    assert (tmp_path / "file.bin").read_bytes() == body
    assert server.requests[1] == ("/file.bin", "bytes=50000-")


def test_server_errors_are_retried_with_exponential_backoff(server, tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    body = _bytes(1000)
    url = server.serve("/file.bin", body, status=503, fail_first=3)
    download.fetch(url, tmp_path / "file.bin", retries=5, backoff=1.5, log=io.StringIO())
    assert (tmp_path / "file.bin").read_bytes() == body
    assert delays == [1.5, 3.0, 6.0]


@pytest.mark.parametrize(
    "behaviour, sha256, requests, reason",
    [
        ({"status": 404}, None, 1, "HTTP 404"),
        ({"status": 500}, None, 3, "gave up after 3 attempts"),
    ],
    ids=["404", "500"],
)
def test_definitive_failures_name_url_and_file_and_leave_nothing(server, tmp_path, behaviour, sha256, requests, reason):
    url = server.serve("/networks/net.pth", _bytes(5000), **behaviour)
    dest = tmp_path / "networks" / "net.pth"
    with pytest.raises(DownloadError) as failure:
        download.fetch(
            url, dest, sha256=sha256, retries=2, backoff=0, base_url_key="downloads.base_url.cirtorch",
            log=io.StringIO(),
        )  # fmt: skip
    message = str(failure.value)
    assert url in message and str(dest) in message and reason in message
    assert "Retry later" in message and "downloads.base_url.cirtorch" in message
    assert f"place it at {dest.resolve()}" in message
    assert len(server.requests) == requests
    assert _leftovers(dest.parent) == []


def test_correct_sha256_is_accepted(server, tmp_path):
    body = _bytes(5000)
    url = server.serve("/file.bin", body)
    dest = download.fetch(url, tmp_path / "file.bin", sha256=hashlib.sha256(body).hexdigest(), log=io.StringIO())
    assert dest.read_bytes() == body


def test_stale_checksum_names_the_config_key_to_fix(server, tmp_path):
    """The same wrong digest from two complete downloads: the configured checksum, not the transfer, is at fault."""
    body = _bytes(5000)
    server.serve("/networks/gl18/net-a4d43db.pth", body)
    stale = "ab" * 32
    plan = _plan(
        server,
        files={"networks/net-a4d43db.pth": {"host": "local", "path": "networks/gl18/net-a4d43db.pth"}},
        sha256={"net-a4d43db.pth": stale},
    )
    dest = tmp_path / "data" / "networks" / "net-a4d43db.pth"
    with pytest.raises(DownloadError) as failure:
        download.download_file(plan, "networks/net-a4d43db.pth", dest, tmp_path / "log.txt")
    message = str(failure.value)
    actual = hashlib.sha256(body).hexdigest()
    assert f"its sha256 is {actual}, not the {stale} configured in downloads.sha256.net-a4d43db.pth" in message
    assert "5000 bytes (the size the server announced both times)" in message
    assert "it is downloads.sha256.net-a4d43db.pth that needs fixing" in message
    assert f"set downloads.sha256.net-a4d43db.pth to {actual} in the config" in message
    assert "Retry later" not in message and "downloads.base_url.local" in message
    assert len(server.requests) == 2
    assert _leftovers(dest.parent) == []


def test_damaged_transfer_is_downloaded_again_and_kept_when_right(server, tmp_path):
    body = _bytes(5000)
    url = server.serve("/file.bin", body, corrupt_first=1)
    log = io.StringIO()
    dest = download.fetch(url, tmp_path / "file.bin", sha256=hashlib.sha256(body).hexdigest(), log=log)
    assert dest.read_bytes() == body
    assert len(server.requests) == 2 and "the first was damaged" in log.getvalue()


def test_two_different_wrong_digests_blame_the_transfer(server, tmp_path):
    body = _bytes(5000)
    url = server.serve("/file.bin", body, corrupt_first=2)
    with pytest.raises(DownloadError) as failure:
        download.fetch(
            url, tmp_path / "file.bin", sha256=hashlib.sha256(body).hexdigest(), sha256_key="downloads.sha256.file.bin",
            base_url_key="downloads.base_url.local", log=io.StringIO(),
        )  # fmt: skip
    message = str(failure.value)
    assert "then" in message and "the transfers were damaged" in message
    assert "the configured checksum is not at fault" in message
    assert "Retry later" in message and "downloads.base_url.local" in message
    assert len(server.requests) == 2
    assert _leftovers(tmp_path) == []


class _SystemPayload:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _plan(server: LocalServer, files=None, image_folders=None, sha256=None) -> download.DownloadPlan:
    return download.plan_downloads(
        {
            "retries": 1,
            "timeout": 5,
            "base_url": {"local": server.url("/")},
            "files": files or {},
            "image_folders": image_folders or {},
            "sha256": sha256 or {},
        }
    )


def test_malicious_pickle_is_refused_without_running(server, tmp_path):
    marker = tmp_path / "payload-ran"
    malicious = {"imlist": ["a"], "qimlist": [], "gnd": [_SystemPayload(f"touch '{marker}'")]}
    server.serve("/test/roxford5k/gnd_roxford5k.pkl", pickle.dumps(malicious, protocol=4))
    plan = _plan(
        server,
        files={"test/roxford5k/gnd_roxford5k.pkl": {"host": "local", "path": "test/roxford5k/gnd_roxford5k.pkl"}},
    )
    dest = tmp_path / "data" / "test" / "roxford5k" / "gnd_roxford5k.pkl"
    log = tmp_path / "log.txt"
    with pytest.raises(DownloadError, match="refusing to load"):
        download.download_file(plan, "test/roxford5k/gnd_roxford5k.pkl", dest, log)
    assert not marker.exists()
    assert _leftovers(dest.parent) == []
    assert "DownloadError" in log.read_text()
    assert len(server.requests) == 1  # a refused file is not worth another attempt


# ---------------------------------------------------------------------------------------------------------------
# archives
def _jpeg(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _tar(files: dict[str, bytes], mode: str = "w:gz", special: list[tarfile.TarInfo] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for info in special:
            bundle.addfile(info)
    return out.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return out.getvalue()


def _images(names: list[str], seed: int = 0) -> dict[str, bytes]:
    return {name: _jpeg(seed + i) for i, name in enumerate(names)}


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
def test_extract_keeps_or_flattens_the_tree(tmp_path, suffix):
    files = _images(["paris/defense/paris_defense_000000.jpg", "paris/eiffel/paris_eiffel_000001.jpg"])
    archive = tmp_path / f"paris_1{suffix}"
    archive.write_bytes(_zip(files) if suffix == ".zip" else _tar(files, "w" if suffix == ".tar" else "w:gz"))
    assert download.extract_archive(archive, tmp_path / "kept") == 2
    assert (tmp_path / "kept" / "paris" / "eiffel" / "paris_eiffel_000001.jpg").read_bytes() == files[
        "paris/eiffel/paris_eiffel_000001.jpg"
    ]
    assert download.extract_archive(archive, tmp_path / "jpg", flatten=True) == 2
    assert sorted(os.listdir(tmp_path / "jpg")) == ["paris_defense_000000.jpg", "paris_eiffel_000001.jpg"]
    assert sorted(os.listdir(tmp_path)) == sorted([archive.name, "kept", "jpg"])


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar", ".zip"])
def test_truncated_archive_is_refused_and_leaves_nothing(tmp_path, suffix):
    files = {f"oxbuild/img_{i}.jpg": _bytes(20_000, seed=i) for i in range(4)}  # incompressible: cut hits data
    data = _zip(files) if suffix == ".zip" else _tar(files, "w" if suffix == ".tar" else "w:gz")
    archive = tmp_path / f"oxbuild_images-v1{suffix}"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt") as failure:
        download.extract_archive(archive, tmp_path / "jpg", flatten=True)
    assert str(archive) in str(failure.value) and "delete it and download it again" in str(failure.value)
    assert _leftovers(tmp_path) == [archive.name]


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "files, special, reason",
    [
        ({"../evil.jpg": b"x"}, [], "outside the target folder"),
        ({"jpg/../../evil.jpg": b"x"}, [], "outside the target folder"),
        ({"/tmp/evil.jpg": b"x"}, [], "outside the target folder"),
        ({}, [_special("jpg/link.jpg", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link to /etc/passwd"),
        ({}, [_special("jpg/link.jpg", tarfile.SYMTYPE, "other.jpg")], "symbolic link"),
        ({"jpg/a.jpg": b"x"}, [_special("jpg/hard.jpg", tarfile.LNKTYPE, "../../../etc/passwd")], "hard link"),
        ({}, [_special("jpg/tty", tarfile.CHRTYPE)], "device, FIFO or other special file"),
        ({}, [_special("jpg/pipe", tarfile.FIFOTYPE)], "device, FIFO or other special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-in", "hardlink", "device", "fifo"],
)
def test_unsafe_tar_members_are_refused(tmp_path, files, special, reason):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "evil.tar.gz"
    archive.write_bytes(_tar({"jpg/good.jpg": _jpeg(0), **files}, special=special))
    with pytest.raises(ArchiveError, match=reason) as failure:
        download.extract_archive(archive, work / "out", flatten=True)
    assert str(archive) in str(failure.value)
    assert _leftovers(work) == ["evil.tar.gz"]
    assert not (tmp_path / "evil.jpg").exists()


def _zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    "member, reason",
    [(("../evil.jpg", b"x"), "outside the target folder"), (_zip_symlink("link.jpg", "/etc/passwd"), "symbolic link")],
    ids=["dotdot", "symlink"],
)
def test_unsafe_zip_members_are_refused(tmp_path, member, reason):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("good.jpg", _jpeg(0))
        bundle.writestr(*member)
    with pytest.raises(ArchiveError, match=reason):
        download.extract_archive(archive, tmp_path / "out")
    assert _leftovers(tmp_path) == ["evil.zip"]


def test_flattening_two_files_of_one_name_is_refused(tmp_path):
    archive = tmp_path / "dup.tgz"
    archive.write_bytes(_tar(_images(["a/img.jpg", "b/img.jpg"])))
    with pytest.raises(ArchiveError, match="two members unpack to img.jpg"):
        download.extract_archive(archive, tmp_path / "jpg", flatten=True)
    assert _leftovers(tmp_path) == ["dup.tgz"]


def _unpacked(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    archive = tmp_path / f"{name}.tgz"
    archive.write_bytes(_tar(files))
    download.extract_archive(archive, tmp_path / f"{name}.unpacked")
    return tmp_path / f"{name}.unpacked"


def test_assemble_merges_parts_and_checks_the_count(tmp_path):
    parts = [
        _unpacked(tmp_path, "part1", _images(["00/a.jpg", "01/b.jpg"])),
        _unpacked(tmp_path, "part2", _images(["00/c.jpg"], seed=5)),
    ]
    with pytest.raises(ArchiveError, match="hold 3 images, not the 4 expected") as failure:
        download.assemble_image_folder(parts, tmp_path / "jpg", expected_images=4)
    assert "downloads.image_folders" in str(failure.value)
    assert not (tmp_path / "jpg").exists() and not list(tmp_path.glob(".jpg*"))
    assert download.assemble_image_folder(parts, tmp_path / "jpg", expected_images=3) == 3
    assert sorted(str(p.relative_to(tmp_path / "jpg")) for p in (tmp_path / "jpg").rglob("*.jpg")) == [
        "00/a.jpg",
        "00/c.jpg",
        "01/b.jpg",
    ]
    assert (parts[0] / "00" / "a.jpg").exists()  # parts stay whole until Snakemake removes them


def test_assemble_refuses_a_file_in_two_parts(tmp_path):
    parts = [_unpacked(tmp_path, "p1", _images(["x.jpg"])), _unpacked(tmp_path, "p2", _images(["x.jpg"], seed=3))]
    with pytest.raises(ArchiveError, match="x.jpg is in more than one archive"):
        download.assemble_image_folder(parts, tmp_path / "jpg")
    assert not (tmp_path / "jpg").exists()


@pytest.fixture
def umask(request):
    """The process's umask set to ``request.param`` for the test, restored after it."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True, ids=["022", "077"])
def test_downloaded_and_unpacked_files_get_the_umasks_permissions(server, tmp_path, umask):
    """Folders and files made by the download stages have the modes the umask gives any new folder or file
    (0777 and 0666 less the umask): world-readable under umask 022, the user's alone under 077."""
    images = _images(["00/a.jpg", "01/b.jpg"])
    server.serve("/ims.tar.gz", _tar(images))
    server.serve("/db.txt", b"00/a.jpg\n01/b.jpg\n")
    plan = _plan(
        server,
        files={"train/db.txt": {"host": "local", "path": "db.txt"}},
        image_folders={"train/ims": {"host": "local", "archives": ["ims.tar.gz"], "images": 2}},
    )
    data, logs = tmp_path / "data", tmp_path / "logs"
    download.download_file(plan, "train/db.txt", data / "train" / "db.txt", logs / "db.log")
    archive = data / "train" / "ims.download" / "ims.tar.gz"
    unpacked = archive.with_name("ims.tar.gz.unpacked")
    download.download_archive(plan, "ims.tar.gz", archive, logs / "archive.log")
    download.unpack_archive(plan, "train/ims", archive, unpacked, logs / "unpack.log")
    download.assemble_folder(plan, "train/ims", [unpacked], data / "train" / "ims", logs / "ims.log")

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    folders = [unpacked, unpacked / "00", data / "train" / "ims", data / "train" / "ims" / "01"]
    files = [data / "train" / "db.txt", archive, unpacked / "00" / "a.jpg", data / "train" / "ims" / "01" / "b.jpg"]
    assert {str(path): oct(mode(path)) for path in folders} == {str(path): oct(0o777 & ~umask) for path in folders}
    assert {str(path): oct(mode(path)) for path in files} == {str(path): oct(0o666 & ~umask) for path in files}
    world_readable = all(mode(path) & stat.S_IROTH for path in folders + files)
    assert world_readable == (umask == 0o022)


# ---------------------------------------------------------------------------------------------------------------
# the config's downloads section
def test_plan_of_the_paper_config_covers_what_the_workflow_reads():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    plan = download.plan_downloads(config["downloads"])
    cirtorch = "http://cmp.felk.cvut.cz/cnnimageretrieval/data"
    assert plan.files["networks/gl18-tl-resnet101-gem-w-a4d43db.pth"].url == (
        f"{cirtorch}/networks/gl18/gl18-tl-resnet101-gem-w-a4d43db.pth"
    )
    assert plan.files["test/roxford5k/gnd_roxford5k.pkl"].base_url_key == "downloads.base_url.cirtorch"
    user_supplied = {"rSfM120k-resnet101-mac-lw"}  # no public checkpoint: config.yaml says where to place one
    for name, spec in config["networks"].items():  # every other network's weights can be downloaded
        if name not in user_supplied:
            weights = spec.get("checkpoint") or spec["body_checkpoint"]
            assert weights.removeprefix("<data>/") in plan.files, name
    for name in config["datasets"]["test"]:  # the paths of csa_rerank.plan.paths.raw_data()
        assert f"test/{name}/gnd_{name}.pkl" in plan.files and f"test/{name}/jpg" in plan.image_folders
    assert {"revisitop1m/revisitop1m.txt", "train/retrieval-SfM-120k/retrieval-SfM-120k.pkl"} <= set(plan.files)
    r1m = plan.image_folders["revisitop1m/jpg"]
    assert len(r1m.archives) == 100 and r1m.archives[-1] == "revisitop1m.100.tar.gz" and r1m.images == 1_001_001
    assert (
        plan.archives["revisitop1m.7.tar.gz"].url
        == "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.7.tar.gz"
    )
    assert plan.image_folders["test/rparis6k/jpg"].archives == ("paris_1-v1.tgz", "paris_2-v1.tgz")
    assert plan.image_folders["test/roxford5k/jpg"].flatten and not r1m.flatten


@pytest.mark.parametrize(
    "change, message",
    [
        ({"files": {"a.pkl": {"host": "nohost", "path": "a.pkl"}}}, "host 'nohost' has no downloads.base_url"),
        ({"sha256": {"typo.pth": "0" * 64}}, "no file or archive is named typo.pth"),
        ({"files": {"x/a.pkl": {"host": "h", "path": "a.pkl"}, "y/a.pkl": {"host": "h", "path": "b/a.pkl"}}}, "unique"),
        ({"image_folders": {"jpg": {"host": "h", "archives": ["p{part}.tgz"]}}}, "need 'parts'"),
        ({"image_folders": {"jpg": {"host": "h", "archives": ["p.tgz"], "parts": 3}}}, "no archive path contains"),
    ],
    ids=["host", "sha256-key", "duplicate-name", "part-without-parts", "parts-without-part"],
)
def test_plan_errors_name_the_config_key(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        download.plan_downloads({"base_url": {"h": "http://example.invalid"}, **change})


# ---------------------------------------------------------------------------------------------------------------
# the stages of the download rules, called as the rules call them
def test_rule_stages_build_the_cirtorch_layout(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)  # the retry after the cut transfer
    oxford = _images([f"oxbuild_images/oxford_{i:06d}.jpg" for i in range(5)])
    paris_1 = _images(["paris/defense/paris_defense_000000.jpg", "paris/defense/paris_defense_000001.jpg"], seed=10)
    paris_2 = _images(["paris/eiffel/paris_eiffel_000000.jpg"], seed=20)
    r1m_1, r1m_2 = _images(["0/0/a.jpg", "0/1/b.jpg"], seed=30), _images(["1/0/c.jpg"], seed=40)
    server.serve("/oxbuildings/oxbuild_images-v1.tgz", _tar(oxford), cut_first=1)
    server.serve("/parisbuildings/paris_1-v1.tgz", _tar(paris_1))
    server.serve("/parisbuildings/paris_2-v1.tgz", _tar(paris_2))
    server.serve("/r1m/jpg/revisitop1m.1.tar.gz", _tar(r1m_1))
    server.serve("/r1m/jpg/revisitop1m.2.tar.gz", _tar(r1m_2))
    names = [Path(name).stem for name in oxford]
    gnd = {
        "imlist": names[:4],
        "qimlist": names[4:],
        "gnd": [{"bbx": [0, 0, 8, 8], "easy": [0], "hard": [], "junk": []}],
    }
    server.serve("/test/roxford5k/gnd_roxford5k.pkl", pickle.dumps(gnd, protocol=2))
    server.serve("/r1m/revisitop1m.txt", "\n".join([*r1m_1, *r1m_2]).encode())
    checkpoint = _bytes(10_000)
    server.serve("/networks/gl18/gl18-tl-resnet101-gem-w-a4d43db.pth", checkpoint)

    plan = _plan(
        server,
        files={
            "test/roxford5k/gnd_roxford5k.pkl": {"host": "local", "path": "test/roxford5k/gnd_roxford5k.pkl"},
            "revisitop1m/revisitop1m.txt": {"host": "local", "path": "r1m/revisitop1m.txt"},
            "networks/gl18-tl-resnet101-gem-w-a4d43db.pth": {
                "host": "local",
                "path": "networks/gl18/gl18-tl-resnet101-gem-w-a4d43db.pth",
            },
        },
        image_folders={
            "test/roxford5k/jpg": {
                "host": "local",
                "archives": ["oxbuildings/oxbuild_images-v1.tgz"],
                "flatten": True,
                "images": 5,
            },
            "test/rparis6k/jpg": {
                "host": "local",
                "archives": ["parisbuildings/paris_1-v1.tgz", "parisbuildings/paris_2-v1.tgz"],
                "flatten": True,
            },
            "revisitop1m/jpg": {
                "host": "local",
                "archives": ["r1m/jpg/revisitop1m.{part}.tar.gz"],
                "parts": 2,
                "images": 3,
            },
        },
        sha256={"gl18-tl-resnet101-gem-w-a4d43db.pth": hashlib.sha256(checkpoint).hexdigest()},
    )
    data, logs = tmp_path / "data", tmp_path / "logs"
    for name in plan.files:  # rule download_file
        download.download_file(plan, name, data / name, logs / f"{name}.log")
    for folder, spec in plan.image_folders.items():
        parts = []
        for archive in spec.archives:  # rules download_archive, unpack_archive
            archive_path = data / f"{folder}.download" / archive
            download.download_archive(plan, archive, archive_path, logs / folder / f"{archive}.log")
            parts.append(data / f"{folder}.download" / f"{archive}.unpacked")
            download.unpack_archive(plan, folder, archive_path, parts[-1], logs / folder / f"{archive}.unpack.log")
        download.assemble_folder(plan, folder, parts, data / folder, logs / f"{folder}.log")  # assemble_image_folder

    cfg = datasets.load_ground_truth(data / "test" / "roxford5k" / "gnd_roxford5k.pkl")
    db, queries, _ = datasets.test_image_paths(data / "test" / "roxford5k", cfg)
    assert all(path.exists() for path in db + queries)
    assert sorted(os.listdir(data / "test" / "rparis6k" / "jpg")) == [
        "paris_defense_000000.jpg",
        "paris_defense_000001.jpg",
        "paris_eiffel_000000.jpg",
    ]
    distractors = datasets.distractor_image_paths(data / "revisitop1m" / "revisitop1m.txt")
    assert [path.read_bytes() for path in distractors] == [*r1m_1.values(), *r1m_2.values()]
    assert (data / "networks" / "gl18-tl-resnet101-gem-w-a4d43db.pth").read_bytes() == checkpoint
    assert not list(data.rglob("*.part")) and not list(data.rglob(".*.partial"))
    assert "images" in (logs / "test" / "roxford5k" / "jpg.log").read_text()


# ---------------------------------------------------------------------------------------------------------------
# the download rules in the workflow (dry runs: nothing is fetched)
SNAKEMAKE = [
    sys.executable,
    "-m",
    "snakemake",
    "--snakefile",
    str(REPO / "Snakefile"),
    "--configfile",
    str(REPO / "config.yaml"),
]


def _dry_run_jobs(cwd: Path) -> dict[str, int]:
    result = subprocess.run([*SNAKEMAKE, "-n"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    stats = result.stdout.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}


def test_paper_dry_run_plans_one_job_per_file_and_archive(tmp_path):
    jobs = _dry_run_jobs(tmp_path)
    # 3 gl18 checkpoints, the ImageNet ResNet101 body, the VGG16-GeM checkpoint, 2 ground truths, the rSfM120k
    # database and whitening pickles, the R1M list; archives: Oxford 1 + Paris 2 + rSfM120k 1 + R1M 100
    assert jobs["download_file"] == 10
    assert jobs["download_archive"] == jobs["unpack_archive"] == 104
    assert jobs["assemble_image_folder"] == 4
    assert not (tmp_path / "data").exists()


def test_files_placed_by_hand_are_used_as_is(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    data = tmp_path / "data"
    needed = list(download.plan_downloads(config["downloads"]).files)
    long_ago = time.time() - 10 * 365 * 86400  # older than every workflow file, as after `cp -p` of an old copy
    for name in needed:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"placed by hand")
        os.utime(data / name, (long_ago, long_ago))
    for folder in config["downloads"]["image_folders"]:
        (data / folder).mkdir(parents=True)
        (data / folder / "image.jpg").write_bytes(b"placed by hand")
        os.utime(data / folder, (long_ago, long_ago))
    jobs = _dry_run_jobs(tmp_path)
    assert not {"download_file", "download_archive", "unpack_archive", "assemble_image_folder"} & set(jobs), jobs
    assert jobs["extract"] == 18 and jobs["extract_shard"] == 21
