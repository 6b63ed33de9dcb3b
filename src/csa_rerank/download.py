"""Robust downloads of the paper's datasets and networks, and safe unpacking of their image archives.

Three layers:

- :func:`fetch` downloads one URL to one file: through ``<file>.part``, resuming a partial file with an HTTP
  ``Range`` request, retrying transient failures (connection errors, stalls, cut transfers, 5xx) with exponential
  backoff, checking an optional sha256 and a content check, and renaming into place only when complete;
- :func:`extract_archive` unpacks one tar/zip archive after checking every member (no absolute paths, no ``..``,
  no links, no device files), and :func:`assemble_image_folder` merges unpacked archives into one image folder,
  checking the number of images; both build the result in a temporary folder beside it and rename it at the end;
- :func:`plan_downloads` turns the config's ``downloads`` section into a :class:`DownloadPlan`, and
  :func:`download_file`, :func:`download_archive`, :func:`unpack_archive` and :func:`assemble_folder` are the
  stages run by the rules of ``workflow/rules/download.smk`` (one job per file or archive).

Downloaded pickles are only ever read through :mod:`csa_rerank.safe_pickle`.  Nothing here touches the network
when imported or when a plan is built, so ``snakemake -n`` stays offline.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import re
import secrets
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, NoReturn

from tqdm import tqdm

from . import __version__, safe_pickle

CHUNK_BYTES = 1 << 20
MAX_BACKOFF_SECONDS = 60.0
USER_AGENT = f"csa-rerank/{__version__} (Python urllib)"
# the marker Snakemake writes into every directory() output, so also into each unpacked archive
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"
# HTTP answers worth another attempt: server errors, plus "request timeout" and "too many requests"
_RETRY_STATUS = {408, 429}
# Failures of one attempt that a later attempt may not see (the socket errors urllib and http.client raise)
_TRANSIENT_ERRORS = (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError)
# What reading a damaged archive raises, besides tarfile's and zipfile's own errors
_CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile)


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and the file and says what to do."""


class ArchiveError(RuntimeError):
    """An archive is corrupt, unsafe to unpack, or does not hold what was expected."""


class _TransientError(Exception):
    """One attempt failed in a way that another attempt may not (internal to :func:`fetch`)."""


# ---------------------------------------------------------------------------------------------------------------
# fetching one file
def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 2.0,
    validate: Callable[[Path], object] | None = None,
    base_url_key: str | None = None,
    sha256_key: str | None = None,
    log: IO[str] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to ``<dest>.part``; an existing ``.part`` (left by a killed process or a failed attempt) is
    resumed with a ``Range`` request, and restarted from byte 0 when the server ignores or refuses the range.
    Connection errors, timeouts (``timeout`` seconds without data), transfers cut short of their Content-Length
    and HTTP 5xx are retried up to ``retries`` times, waiting ``backoff`` x 1, 2, 4, ... seconds (at most 60).
    The complete file must match ``sha256`` when given and pass ``validate`` (called with the path of the
    complete ``.part``; an exception refuses the file) before it is renamed to ``dest``.  A file whose sha256
    does not match is downloaded once more from byte 0: a match then keeps it (the first transfer was damaged),
    the same wrong digest twice means the file on the server is not the one the checksum describes (the
    configured checksum, the config key ``sha256_key``, is then the thing to fix), two different digests a
    damaged transfer.

    On a definitive failure (HTTP 4xx, checksum or validation failure, retries exhausted) the partial file is
    removed and :class:`DownloadError` is raised; its message names the URL and ``dest`` and suggests retrying,
    a mirror (the config key ``base_url_key`` when given) or placing the file by hand, or, for a stale checksum,
    the config key to correct.  Progress and retry notices go to ``log`` (default: stderr).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    log = log or sys.stderr
    dest.parent.mkdir(parents=True, exist_ok=True)
    download = functools.partial(_download, url, dest, part, retries, timeout, backoff, base_url_key, log)
    announced = download()
    if sha256:
        _check_sha256(url, dest, part, sha256.lower(), sha256_key, base_url_key, announced, download, log)
    if validate is not None:
        try:
            validate(part)
        except Exception as err:  # whatever the check raises, the file is not what it should be
            _give_up(url, dest, part, f"the downloaded file was refused: {err}", base_url_key, err)
    os.replace(part, dest)
    print(f"{url}: complete, {dest.stat().st_size} bytes in {dest}", file=log, flush=True)
    return dest


def _download(
    url: str, dest: Path, part: Path, retries: int, timeout: float, backoff: float, base_url_key: str | None, log
) -> int | None:
    """Bring ``part`` to the whole of ``url`` (the attempts and retries of :func:`fetch`); the announced size."""
    for attempt in range(retries + 1):
        try:
            return _transfer(url, part, timeout, log)
        except urllib.error.HTTPError as err:
            reason = f"HTTP {err.code} {err.reason}"
            if err.code < 500 and err.code not in _RETRY_STATUS:
                _give_up(url, dest, part, reason, base_url_key, err)
        except (_TransientError, *_TRANSIENT_ERRORS) as err:
            reason = _describe(err)
        if attempt == retries:
            _give_up(url, dest, part, f"{reason} (gave up after {retries + 1} attempts)", base_url_key, None)
        delay = min(backoff * 2**attempt, MAX_BACKOFF_SECONDS)
        print(f"{url}: {reason}; attempt {attempt + 2} of {retries + 1} in {delay:g} s", file=log, flush=True)
        time.sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or gives up


def _check_sha256(
    url: str,
    dest: Path,
    part: Path,
    expected: str,
    sha256_key: str | None,
    base_url_key: str | None,
    announced: int | None,
    download: Callable[[], int | None],
    log: IO[str],
) -> None:
    """Keep the complete ``part`` when its sha256 is ``expected``; if not, ``download`` it once more and compare.

    ``announced`` is the size the server announced for the first download.  Raises :class:`DownloadError` saying
    whether the configured checksum (config key ``sha256_key``) or the transfer is at fault: the same wrong digest
    from two complete downloads means the server's file is not the one the checksum describes (most likely a new
    version upstream), two different ones a damaged transfer.
    """
    first = file_sha256(part)
    if first == expected:
        return
    key = sha256_key or "the expected sha256"
    size = part.stat().st_size
    print(
        f"{url}: sha256 {first} is not the {expected} of {key}; downloading it again to tell a damaged transfer "
        "from a changed file", file=log, flush=True,
    )  # fmt: skip
    part.unlink()
    announced_again = download()
    second = file_sha256(part)
    if second == expected:
        print(f"{url}: the second download has the expected sha256 (the first was damaged)", file=log, flush=True)
        return
    if second != first:
        _give_up(
            url, dest, part,
            f"its sha256 was {first}, then {second} when downloaded again, neither the {expected} of {key}: the "
            "transfers were damaged (or the file on the server is changing), the configured checksum is not at fault",
            base_url_key, None,
        )  # fmt: skip
    served = " (the size the server announced both times)" if announced == announced_again == size else ""
    mirror = f"from a mirror (config key {base_url_key})" if base_url_key else "from a mirror"
    _give_up(
        url, dest, part,
        f"its sha256 is {first}, not the {expected} configured in {key}. Two complete downloads gave the same "
        f"{size} bytes{served} with this same sha256, so the transfer is not at fault: the file on the server is not "
        f"the one the checksum describes (most likely a new version upstream, or a wrong value in the config), and "
        f"it is {key} that needs fixing",
        base_url_key, None,
        advice=(
            f"If the new file is the one you want, set {key} to {first} in the config (or remove {key}) and run "
            f"again. To keep to the old version, fetch it {mirror} or place it yourself at {dest.resolve()}"
        ),
    )  # fmt: skip


def _transfer(url: str, part: Path, timeout: float, log: IO[str]) -> int | None:
    """One attempt: append the rest of ``url`` to ``part`` (or rewrite it), raising when the file is incomplete.

    Returns the size of the file the server announced (None when it announced none).
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # Range not satisfiable: the partial file is already whole (a process killed before its rename) or is
        # longer than the file on the server (which changed); only the latter needs a fresh start
        if _content_range(err.headers.get("Content-Range", ""))[1] == offset:
            return offset
        part.unlink()
        raise _TransientError("the server refused to resume the partial file; starting again from byte 0") from err
    with response:
        first, total = _content_range(response.headers.get("Content-Range", ""))
        if response.status == 206 and first != offset:
            part.unlink(missing_ok=True)
            raise _TransientError("the server sent another byte range than asked for; starting again from byte 0")
        if offset and response.status != 206:
            print(f"{url}: the server ignored the resume request; starting again from byte 0", file=log, flush=True)
            offset = 0
        length = response.headers.get("Content-Length")
        if total is None and length is not None:
            total = offset + int(length)
        # a log file gets a progress line every 30 s, a terminal a live bar
        refresh = 0.5 if getattr(log, "isatty", lambda: False)() else 30.0
        label = part.name.removesuffix(".part")
        progress = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=log,
            mininterval=refresh,
        )  # fmt: skip
        with progress, open(part, "ab" if offset else "wb") as out:
            while chunk := response.read1(CHUNK_BYTES):  # what has arrived, so a stall keeps it
                out.write(chunk)
                progress.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _TransientError(f"transfer cut after {size} of {total} bytes")
    return total


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header such as ``bytes 100-199/200`` or ``bytes */200``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect ({err.reason})"
    if isinstance(err, TimeoutError):
        return "no data within the timeout"
    return str(err) or type(err).__name__


def _give_up(
    url: str, dest: Path, part: Path, reason: str, base_url_key: str | None, cause, advice: str | None = None
) -> NoReturn:
    part.unlink(missing_ok=True)
    mirror = (
        f"set the config key {base_url_key} to a mirror's base URL" if base_url_key else "download it from a mirror"
    )
    advice = advice or f"Retry later, {mirror}, or fetch the file yourself and place it at {dest.resolve()}"
    raise DownloadError(f"cannot download {url} to {dest}: {reason}. Nothing was kept. {advice}") from cause


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# unpacking
def extract_archive(archive: str | Path, target_dir: str | Path, *, flatten: bool = False) -> int:
    """Unpack ``archive`` (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip) into ``target_dir``; return its file count.

    Every member is checked before it is written: an absolute path, a ``..`` component, a symbolic or hard link, or
    a device file, FIFO or other special file refuses the whole archive (image archives hold none).  ``flatten``
    puts every file directly in ``target_dir`` (cirtorch does so with the Oxford and Paris archives, whose images
    sit in sub-folders); two files of the same name are then an error.  The files are written to a temporary
    folder beside ``target_dir``, renamed to it when all are there, and removed on any failure, so the target
    either is complete or does not exist.  A truncated or corrupt archive raises :class:`ArchiveError` naming it.
    """
    archive, target = Path(archive), Path(target_dir)
    with _staging_folder(target) as staging:
        count = 0
        try:
            for name, open_member in _archive_members(archive):
                out = staging / (PurePosixPath(name).name if flatten else name)
                if out.exists():
                    raise ArchiveError(f"{archive}: two members unpack to {out.relative_to(staging)}")
                out.parent.mkdir(parents=True, exist_ok=True)
                with open_member() as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
                count += 1
        except _CORRUPT_ARCHIVE_ERRORS as err:
            raise ArchiveError(
                f"{archive}: truncated or corrupt ({type(err).__name__}: {err}); delete it and download it again"
            ) from err
        if count == 0:
            raise ArchiveError(f"{archive}: holds no files; delete it and download it again")
    return count


def _archive_members(archive: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(safe relative path, opener) of every regular file of ``archive``, after checking each member."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                name = _safe_member_path(archive, info.filename)
                # the Unix file type, when the archive records one (0 for archives made elsewhere)
                file_type = stat.S_IFMT(info.external_attr >> 16)
                if info.is_dir() or not name:
                    continue
                if file_type == stat.S_IFLNK:
                    raise ArchiveError(f"{archive}: member {info.filename} is a symbolic link; refusing to unpack")
                if file_type not in (0, stat.S_IFREG):
                    raise ArchiveError(f"{archive}: member {info.filename} is not a regular file; refusing to unpack")
                yield name, lambda info=info: bundle.open(info)
        return
    with tarfile.open(archive, "r:*") as bundle:
        for member in bundle:  # streams through the archive: members are read in order, once
            name = _safe_member_path(archive, member.name)
            if member.isdir() or not name:
                continue
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise ArchiveError(
                    f"{archive}: member {member.name} is a {kind} link to {member.linkname}; image archives hold "
                    "only files, refusing to unpack"
                )
            if not member.isfile():
                raise ArchiveError(
                    f"{archive}: member {member.name} is a device, FIFO or other special file; refusing to unpack"
                )
            yield name, lambda member=member: bundle.extractfile(member)


def _safe_member_path(archive: Path, name: str) -> str:
    """``name`` as a relative path inside the target folder, or :class:`ArchiveError` when it would leave it."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise ArchiveError(f"{archive}: member path {name!r} points outside the target folder; refusing to unpack")
    return "/".join(part for part in path.parts if part != ".")


def assemble_image_folder(
    parts: list[str | Path], target_dir: str | Path, *, expected_images: int | None = None
) -> int:
    """Merge the unpacked archives ``parts`` into the image folder ``target_dir``; return its number of images.

    Files keep their paths relative to their part and are hard-linked (copied where the file system cannot link),
    so the parts stay intact until the folder is complete; the ``.snakemake_timestamp`` markers Snakemake writes
    into directory outputs are left out.  A path present in two parts, no image at all, or a count different from
    ``expected_images`` (when given) raises :class:`ArchiveError`; the folder is built beside ``target_dir`` and
    renamed only when complete and checked, so nothing partial is left.
    """
    target = Path(target_dir)
    with _staging_folder(target) as staging:
        made_dirs: set[Path] = set()
        count = 0
        for part in map(Path, parts):
            for root, _dirs, files in os.walk(part):
                for name in files:
                    if name == SNAKEMAKE_TIMESTAMP:
                        continue
                    source = Path(root, name)
                    out = staging / source.relative_to(part)
                    if out.exists():
                        raise ArchiveError(f"{target}: {out.relative_to(staging)} is in more than one archive")
                    if out.parent not in made_dirs:
                        out.parent.mkdir(parents=True, exist_ok=True)
                        made_dirs.add(out.parent)
                    _link_or_copy(source, out)
                    count += 1
        if count == 0:
            raise ArchiveError(f"{target}: the archives {', '.join(map(str, parts))} hold no images")
        if expected_images is not None and count != expected_images:
            raise ArchiveError(
                f"{target}: the archives hold {count} images, not the {expected_images} expected. An archive is "
                f"incomplete or a different version: delete the downloaded archives and their unpacked folders (in "
                f"{target}.download/ when the workflow fetched them) and download them again, or correct the image "
                "count of this folder in the config (downloads.image_folders)"
            )
    return count


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, dest)


def _fresh_folder(parent: Path, prefix: str, suffix: str) -> Path:
    """A new folder of a random name in ``parent``, with the permissions the umask gives any new folder.

    Unlike :func:`tempfile.mkdtemp` (always mode 0700, as befits a private temporary folder), this folder becomes
    the image folder by a rename, so it must be as readable as anything else the user creates: ``os.mkdir``
    applies the umask to mode 0777.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free name for a temporary folder {prefix}*{suffix} in {parent}")


@contextmanager
def _staging_folder(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target``, renamed to it when the block succeeds and removed otherwise."""
    if target.exists():
        raise FileExistsError(f"{target} already exists; delete it to unpack again")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _fresh_folder(target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        yield staging
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a no-op after the rename


# ---------------------------------------------------------------------------------------------------------------
# the config's downloads section and the stages of the download rules
@dataclass(frozen=True)
class Source:
    """One remote file: its URL, its expected sha256 (or None), the config key of its host's base URL and the
    config key that holds (or would hold) its sha256."""

    url: str
    sha256: str | None
    base_url_key: str
    sha256_key: str | None = None


@dataclass(frozen=True)
class ImageFolder:
    """An image folder made of archives: their file names, whether to flatten them, the expected image count."""

    archives: tuple[str, ...]
    flatten: bool
    images: int | None


@dataclass(frozen=True)
class DownloadPlan:
    """What the download rules fetch.  Keys of ``files`` and ``image_folders`` are paths under ``<data>``."""

    files: dict[str, Source]
    archives: dict[str, Source]  # by archive file name
    image_folders: dict[str, ImageFolder]
    retries: int
    timeout: float


def plan_downloads(downloads: dict) -> DownloadPlan:
    """The :class:`DownloadPlan` of the config's ``downloads`` section (validated by the config schema).

    Each file and archive is ``<base_url of its host>/<path>``; an archive path containing ``{part}`` stands for
    ``parts`` archives numbered from 1.  ``sha256`` maps file names to checksums, so every file name must be
    unique.  Configuration mistakes raise ``ValueError`` naming the key.
    """
    base_urls = downloads["base_url"]
    checksums = {name: digest.lower() for name, digest in downloads.get("sha256", {}).items()}

    def source(key: str, host: str, path: str) -> Source:
        if host not in base_urls:
            raise ValueError(f"config key {key}: host {host!r} has no downloads.base_url (has: {', '.join(base_urls)})")
        name = PurePosixPath(path).name
        url = f"{base_urls[host].rstrip('/')}/{path.lstrip('/')}"
        return Source(
            url=url, sha256=checksums.get(name), base_url_key=f"downloads.base_url.{host}",
            sha256_key=f"downloads.sha256.{name}",
        )  # fmt: skip

    files = {
        dest: source(f"downloads.files.{dest}", spec["host"], spec["path"])
        for dest, spec in downloads.get("files", {}).items()
    }
    archives: dict[str, Source] = {}
    image_folders = {}
    for folder, spec in downloads.get("image_folders", {}).items():
        key = f"downloads.image_folders.{folder}"
        paths = _numbered_archives(key, spec["archives"], spec.get("parts"))
        names = []
        for path in paths:
            name = PurePosixPath(path).name
            if name in archives:
                raise ValueError(f"config key {key}: archive {name} is listed twice")
            archives[name] = source(key, spec["host"], path)
            names.append(name)
        image_folders[folder] = ImageFolder(tuple(names), spec.get("flatten", False), spec.get("images"))

    names = Counter([PurePosixPath(dest).name for dest in files] + list(archives))
    duplicates = sorted(name for name, count in names.items() if count > 1)
    if duplicates:
        raise ValueError(f"config key downloads: file names must be unique (sha256 is keyed by them): {duplicates}")
    unknown = sorted(set(checksums) - set(names))
    if unknown:
        raise ValueError(f"config key downloads.sha256: no file or archive is named {', '.join(unknown)}")
    return DownloadPlan(files, archives, image_folders, downloads.get("retries", 5), downloads.get("timeout", 60.0))


def _numbered_archives(key: str, paths: list[str], parts: int | None) -> list[str]:
    numbered = [path for path in paths if "{part}" in path]
    if parts is None and numbered:
        raise ValueError(f"config key {key}: archive paths with {{part}} need 'parts' (the number of archives)")
    if parts is not None and not numbered:
        raise ValueError(f"config key {key}: 'parts' is set but no archive path contains {{part}}")
    expanded = []
    for path in paths:
        if "{part}" in path:
            expanded += [path.replace("{part}", str(part)) for part in range(1, parts + 1)]
        else:
            expanded.append(path)
    return expanded


def download_file(plan: DownloadPlan, name: str, dest: str | Path, log_path: str | Path) -> None:
    """Stage of rule ``download_file``: fetch ``plan.files[name]`` to ``dest``.

    A pickle is kept only when :mod:`csa_rerank.safe_pickle` reads it: one that asks for anything but plain data is
    refused without anything in it being run.
    """
    validate = safe_pickle.load if str(dest).endswith(".pkl") else None
    _fetch_source(plan, plan.files[name], dest, log_path, validate)


def download_archive(plan: DownloadPlan, archive: str, dest: str | Path, log_path: str | Path) -> None:
    """Stage of rule ``download_archive``: fetch the archive named ``archive`` to ``dest``."""
    _fetch_source(plan, plan.archives[archive], dest, log_path)


def _fetch_source(plan: DownloadPlan, source: Source, dest, log_path, validate=None) -> None:
    with _job_log(log_path) as log:
        fetch(
            source.url, dest, sha256=source.sha256, retries=plan.retries, timeout=plan.timeout, validate=validate,
            base_url_key=source.base_url_key, sha256_key=source.sha256_key, log=log,
        )  # fmt: skip


def unpack_archive(
    plan: DownloadPlan, folder: str, archive: str | Path, dest: str | Path, log_path: str | Path
) -> None:
    """Stage of rule ``unpack_archive``: unpack one archive of image folder ``folder`` into ``dest``."""
    with _job_log(log_path) as log:
        count = extract_archive(archive, dest, flatten=plan.image_folders[folder].flatten)
        print(f"{archive}: {count} files unpacked to {dest}", file=log)


def assemble_folder(plan: DownloadPlan, folder: str, parts: list, dest: str | Path, log_path: str | Path) -> None:
    """Stage of rule ``assemble_image_folder``: merge the unpacked archives of ``folder`` into ``dest``."""
    with _job_log(log_path) as log:
        count = assemble_image_folder(parts, dest, expected_images=plan.image_folders[folder].images)
        print(f"{dest}: {count} images", file=log)


@contextmanager
def _job_log(path: str | Path) -> Iterator[IO[str]]:
    """The job's log file, line-buffered; an exception is written to it before it propagates."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as handle:
        try:
            yield handle
        except Exception as err:
            print(f"{type(err).__name__}: {err}", file=handle)
            raise
