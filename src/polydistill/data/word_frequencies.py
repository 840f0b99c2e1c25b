"""Word frequency lists per language: the prior that ranks the pieces of each student's trimmed vocabulary.

The embedded source is wordfreq's "small" lists (words with a frequency of at least one per million, over
Wikipedia, subtitles, news, web text, books and social media), read out of its pinned wheel like the corpus: the
archive is downloaded as bytes, its sha256 checked, and never installed. A list is gzip'd msgpack in wordfreq's
"cB" format: a header, then one list of words per centibel of frequency (bucket i holds words of frequency
10^(-i/100)).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from polydistill.data import fetch
from polydistill.data.archives import FetchSettings, PinnedArchive, download_archive, read_member

WORDS_FILE = "words.jsonl"

WORDFREQ = PinnedArchive("wordfreq", "3.1.1", "wheel",
                         "4b1c6ecffc6198be3396d5cf871c4423ca71c907c231348d352dd54d62b97473")
WORDFREQ_LICENCE = ("data CC-BY-SA 4.0 (wordfreq's lists, from Wikipedia, OpenSubtitles, SUBTLEX, NewsCrawl, "
                    "GlobalVoices, OSCAR, Google Books, Reddit and Twitter); code Apache-2.0")
WORDFREQ_LANGUAGES = frozenset({
    "ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hu", "id", "is",
    "it", "ja", "ko", "lt", "lv", "mk", "ms", "nb", "nl", "pl", "pt", "ro", "ru", "sh", "sk", "sl", "sv", "ta", "tr",
    "uk", "ur", "vi", "zh"})  # the languages of wordfreq 3.1.1's small lists
SOURCES = ("embedded", "file", "none")


@dataclass(frozen=True)
class WordFrequencySettings:
    """params.yaml word_frequencies: where the lists come from and how many words per language are kept."""

    source: str
    path: str
    max_words: int

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown word_frequencies.source '{self.source}': use one of {list(SOURCES)}")
        if self.max_words < 1:
            raise ValueError(f"word_frequencies.max_words must be at least 1, got {self.max_words}")


def wordfreq_member(lang: str) -> str:
    return f"wordfreq/data/small_{lang}.msgpack.gz"


def read_cbpack(data: bytes) -> list[tuple[str, float]]:
    """(word, frequency) pairs of a wordfreq cB list, most frequent first."""
    header, *buckets = msgpack.unpackb(gzip.decompress(data), raw=False)
    if not isinstance(header, dict) or header.get("format") != "cB":
        raise ValueError(f"not a wordfreq cB list: header {header!r}")
    return [(word, 10 ** (-centibels / 100)) for centibels, bucket in enumerate(buckets) for word in bucket]


def _embedded_rows(languages: Sequence[str], max_words: int, cache_dir: Path, retries: int,
                   backoff_seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    covered = [lang for lang in languages if lang in WORDFREQ_LANGUAGES]
    if not covered:
        return [], {}
    archive_path = download_archive(WORDFREQ, cache_dir, retries=retries, backoff_seconds=backoff_seconds)
    rows: list[dict[str, Any]] = []
    sources = {}
    for lang in covered:
        pairs = read_cbpack(read_member(archive_path, wordfreq_member(lang)))
        rows += [{"lang": lang, "word": word, "frequency": frequency} for word, frequency in pairs[:max_words]]
        sources[f"wordfreq-{lang}"] = {
            **fetch.archive_provenance(WORDFREQ, archive_path, [wordfreq_member(lang)], WORDFREQ_LICENCE, lang,
                                       "word frequencies of mixed written and spoken text"),
            "words_read": len(pairs), "words_written": min(len(pairs), max_words)}
    return rows, sources


def _file_rows(path: Path, languages: Sequence[str], max_words: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from polydistill.data.archives import sha256_of
    from polydistill.data.ingest import CorpusLoadError, read_table_file

    frame = read_table_file(path)
    missing = {"lang", "word", "frequency"} - set(frame.columns)
    if missing:
        raise CorpusLoadError(f"word frequency file {path} lacks column(s) {sorted(missing)}; "
                              f"it has {list(frame.columns)}")
    frame = frame[frame["lang"].isin(languages)].sort_values("frequency", ascending=False, kind="stable")
    kept = frame.groupby("lang", sort=False).head(max_words)
    rows = [{"lang": str(lang), "word": str(word), "frequency": float(frequency)}
            for lang, word, frequency in kept[["lang", "word", "frequency"]].itertuples(index=False)]
    return rows, {"file": {"path": str(path), "sha256": sha256_of(path), "words_written": len(rows)}}


def acquire_word_frequencies(settings: WordFrequencySettings, fetch_settings: FetchSettings,
                             languages: Sequence[str], output_dir: Path, root: Path) -> dict[str, Any]:
    """Write words.jsonl ({lang, word, frequency}, most frequent first per language) and provenance.json.

    embedded: wordfreq's list of each language it covers (other languages get none); file: the user's CSV / JSONL
    / Parquet file with columns lang, word, frequency; none: an empty file. At most max_words words per language.
    Nothing is written unless everything was read.
    """
    if settings.source == "embedded":
        rows, sources = _embedded_rows(languages, settings.max_words, root / fetch_settings.cache_dir,
                                       fetch_settings.retries, fetch_settings.backoff_seconds)
    elif settings.source == "file":
        rows, sources = _file_rows(root / settings.path, languages, settings.max_words)
    else:
        rows, sources = [], {}
    counts = {lang: sum(row["lang"] == lang for row in rows) for lang in languages}
    provenance = {"words_file": WORDS_FILE, "source": settings.source, "max_words": settings.max_words,
                  "words_per_language": counts, "sources": sources}
    fetch.write_rows_atomically(Path(output_dir), WORDS_FILE, rows, provenance)
    return provenance


def read_word_frequencies(folder: Path, lang: str) -> list[tuple[str, float]]:
    """The (word, frequency) pairs of one language from a word_frequencies stage output (empty when it has none)."""
    with open(Path(folder) / WORDS_FILE, encoding="utf-8") as handle:
        rows = (json.loads(line) for line in handle)
        return [(row["word"], float(row["frequency"])) for row in rows if row["lang"] == lang]
