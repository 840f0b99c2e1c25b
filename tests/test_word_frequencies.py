"""Word frequency lists: wordfreq's cB format, the pinned wheel, a user's file, and the real lists (slow)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import zipfile
from pathlib import Path

import msgpack
import pytest

from polydistill.data import archives, word_frequencies
from polydistill.data.archives import ArchiveHashMismatch, FetchSettings, PinnedArchive, sha256_of
from polydistill.data.ingest import CorpusLoadError
from polydistill.data.word_frequencies import (
    WORDFREQ,
    WORDS_FILE,
    WordFrequencySettings,
    acquire_word_frequencies,
    read_cbpack,
    read_word_frequencies,
    wordfreq_member,
)

ARCHIVE_CACHE = Path(os.environ.get("POLYDISTILL_ARCHIVE_CACHE", Path(__file__).parents[1] / ".cache" / "archives"))
FETCH = FetchSettings(cache_dir="cache", retries=1, backoff_seconds=0.0)


def cbpack(buckets: list[list[str]]) -> bytes:
    """A wordfreq list: bucket i holds the words of frequency 10^(-i/100)."""
    return gzip.compress(msgpack.packb([{"format": "cB", "version": 1}, *buckets]))


SL_BUCKETS = [[], [], ["je", "in"], [], ["da"], ["ne", "se"]]
ZH_BUCKETS = [["的"], ["是", "了"]]


def settings(source: str = "embedded", max_words: int = 10, path: str = "words.csv") -> WordFrequencySettings:
    return WordFrequencySettings(source=source, path=path, max_words=max_words)


@pytest.fixture
def tiny_wordfreq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny wordfreq wheel (sl and zh lists) in tmp_path/cache, the pin moved to it, the index forbidden."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    wheel = cache_dir / f"wordfreq-{WORDFREQ.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(wordfreq_member("sl"), cbpack(SL_BUCKETS))
        archive.writestr(wordfreq_member("zh"), cbpack(ZH_BUCKETS))
    monkeypatch.setattr(word_frequencies, "WORDFREQ", dataclasses.replace(WORDFREQ, sha256=sha256_of(wheel)))

    def no_download(archive: PinnedArchive, destination: Path) -> Path:
        raise AssertionError(f"the index was asked for {archive.requirement} although the cache holds it")

    monkeypatch.setattr(archives, "_index_download", no_download)
    return wheel


def test_read_cbpack_gives_each_word_its_bucket_frequency_most_frequent_first() -> None:
    pairs = read_cbpack(cbpack(SL_BUCKETS))
    assert [word for word, _ in pairs] == ["je", "in", "da", "ne", "se"]
    assert [frequency for _, frequency in pairs] == pytest.approx([10 ** -0.02] * 2 + [10 ** -0.04] + [10 ** -0.05] * 2)


def test_read_cbpack_refuses_another_format() -> None:
    with pytest.raises(ValueError, match="cB"):
        read_cbpack(gzip.compress(msgpack.packb([{"format": "other"}, ["a"]])))


def test_embedded_lists_are_read_for_the_languages_wordfreq_covers(tiny_wordfreq: Path, tmp_path: Path) -> None:
    provenance = acquire_word_frequencies(settings(max_words=3), FETCH, ["sl", "xx", "zh"], tmp_path / "out",
                                          tmp_path)

    sl_words = read_word_frequencies(tmp_path / "out", "sl")
    assert [word for word, _ in sl_words] == ["je", "in", "da"]
    assert [frequency for _, frequency in sl_words] == pytest.approx([10 ** -0.02, 10 ** -0.02, 10 ** -0.04])
    assert [word for word, _ in read_word_frequencies(tmp_path / "out", "zh")] == ["的", "是", "了"]
    assert read_word_frequencies(tmp_path / "out", "xx") == []
    assert provenance["words_per_language"] == {"sl": 3, "xx": 0, "zh": 3}
    sl = provenance["sources"]["wordfreq-sl"]
    assert (sl["package"], sl["version"], sl["members"], sl["words_read"], sl["words_written"]) == (
        "wordfreq", WORDFREQ.version, [wordfreq_member("sl")], 5, 3)
    assert sl["licence"].startswith("data CC-BY-SA 4.0")
    assert json.loads((tmp_path / "out" / "provenance.json").read_text(encoding="utf-8")) == provenance


def test_a_wrong_hash_is_refused_and_nothing_is_written(tiny_wordfreq: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(word_frequencies, "WORDFREQ", dataclasses.replace(WORDFREQ, sha256="0" * 64))
    monkeypatch.setattr(archives, "_index_download",
                        lambda archive, destination: Path(shutil.copy(tiny_wordfreq, destination)))
    with pytest.raises(ArchiveHashMismatch):
        acquire_word_frequencies(settings(), FETCH, ["sl"], tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_users_file_keeps_each_languages_most_frequent_words(tmp_path: Path) -> None:
    (tmp_path / "words.csv").write_text("lang,word,frequency\nde,und,0.02\nde,der,0.03\nde,die,0.01\nfr,le,0.05\n",
                                        encoding="utf-8")
    provenance = acquire_word_frequencies(settings("file", max_words=2), FETCH, ["de"], tmp_path / "out", tmp_path)
    assert read_word_frequencies(tmp_path / "out", "de") == [("der", 0.03), ("und", 0.02)]
    assert provenance["words_per_language"] == {"de": 2} and provenance["sources"]["file"]["words_written"] == 2
    (tmp_path / "bad.csv").write_text("lang,word\nde,und\n", encoding="utf-8")
    with pytest.raises(CorpusLoadError, match="frequency"):
        acquire_word_frequencies(settings("file", path="bad.csv"), FETCH, ["de"], tmp_path / "other", tmp_path)


def test_no_lists_write_an_empty_file_and_unknown_settings_are_refused(tmp_path: Path) -> None:
    assert acquire_word_frequencies(settings("none"), FETCH, ["en"], tmp_path / "out", tmp_path)["sources"] == {}
    assert (tmp_path / "out" / WORDS_FILE).read_text() == "" and read_word_frequencies(tmp_path / "out", "en") == []
    with pytest.raises(ValueError, match="word_frequencies.source"):
        settings("web")
    with pytest.raises(ValueError, match="max_words"):
        settings(max_words=0)


# Words in wordfreq 3.1.1's small lists, and each list's most frequent word.
REAL_LISTS = {"en": (28917, "the"), "es": (34925, "de"), "id": (31188, "yang"), "sl": (54047, "je"),
              "zh": (38590, "的")}


@pytest.mark.slow
def test_the_real_lists_come_from_the_pinned_wheel(tmp_path: Path) -> None:
    fetch = FetchSettings(cache_dir=str(ARCHIVE_CACHE), retries=3, backoff_seconds=2.0)
    provenance = acquire_word_frequencies(settings(max_words=100_000), fetch, list(REAL_LISTS), tmp_path / "out",
                                          Path("/"))
    for lang, (count, first) in REAL_LISTS.items():
        words = read_word_frequencies(tmp_path / "out", lang)
        assert provenance["sources"][f"wordfreq-{lang}"]["words_read"] == len(words) == count
        assert words[0][0] == first and all(a[1] >= b[1] for a, b in zip(words, words[1:]))
