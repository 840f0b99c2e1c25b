"""The inference log: one SQLite row per text the router answers, for the monitor flow (polydistill.ops.monitor).

Switched on at serve time, without rebuilding the router: `polydistill serve --log-inference [--log-text]` sets
POLYDISTILL_INFERENCE_LOG (the database path) and POLYDISTILL_INFERENCE_LOG_TEXT=1 (keep the raw text; off by
default, so only a SHA-256 of the text is stored) in the server's environment, and the router reads them when it
loads. The database is in WAL mode with a busy timeout, so several server workers can append at once.

Each row: time, request id, lang, status, label, score, student version, text hash, and features computed at serve
time (``FEATURES``): length in characters, the shares of the text's letters in Latin, Han and other scripts, the
share of the text's pieces the student's tokenizer maps to its unknown token (a trimmed vocabulary meeting text it
was not built for), and the language detector's confidence, among the configured languages, that the text is in the
language it was routed to (a client that sends English as `lang: sl` keeps every other feature plausible). The
detector runs only while the log is on, also for rows that came with `lang` (about 16 ms per 32 texts here). This
file imports only the standard library, lingua for the confidence and pandas for reading: it travels with the router
model as MLflow code_paths.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOG_ENV = "POLYDISTILL_INFERENCE_LOG"
TEXT_ENV = "POLYDISTILL_INFERENCE_LOG_TEXT"
FEATURES = ("chars", "latin_share", "han_share", "other_script_share", "unknown_share", "lang_confidence")
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another worker's write to finish

SCHEMA = """
CREATE TABLE IF NOT EXISTS inferences (
    ts REAL NOT NULL, request_id TEXT NOT NULL, lang TEXT, status TEXT NOT NULL, label TEXT, score REAL,
    student_version TEXT, text_sha256 TEXT NOT NULL, chars INTEGER NOT NULL, latin_share REAL, han_share REAL,
    other_script_share REAL, unknown_share REAL, lang_confidence REAL, text TEXT
)"""
COLUMNS = ("ts", "request_id", "lang", "status", "label", "score", "student_version", "text_sha256", *FEATURES,
           "text")


def script_of(character: str) -> str:
    """latin, han or other, from the character's Unicode name (CJK unified ideographs are Han)."""
    name = unicodedata.name(character, "")
    if name.startswith("LATIN"):
        return "latin"
    return "han" if name.startswith("CJK UNIFIED IDEOGRAPH") else "other"


def text_features(text: str, unknown_share: float | None, lang_confidence: float | None) -> dict[str, float | None]:
    """The logged features of one text; shares of letters are 0 for a text without letters."""
    scripts = Counter(script_of(character) for character in text if character.isalpha())
    letters = sum(scripts.values()) or 1
    return {"chars": len(text), "latin_share": scripts["latin"] / letters, "han_share": scripts["han"] / letters,
            "other_script_share": scripts["other"] / letters, "unknown_share": unknown_share,
            "lang_confidence": lang_confidence}


def unknown_shares(tokenizer: Any, texts: Sequence[str]) -> list[float]:
    """Per text: the share of its pieces (special tokens apart) that are the tokenizer's unknown token."""
    pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [sum(piece == tokenizer.unk_token_id for piece in ids) / len(ids) if ids else 0.0 for ids in pieces]


def language_confidences(detector: Any, texts: Sequence[str], lang: str) -> list[float]:
    """Per text: a lingua detector's confidence that it is in `lang` (ISO 639-1), among the detector's languages."""
    from lingua import IsoCode639_1, Language

    language = Language.from_iso_code_639_1(IsoCode639_1.from_str(lang))
    return detector.compute_language_confidence_in_parallel(list(texts), language)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the log in WAL mode, its table created if missing.

    Workers that start together would race to switch a new file to WAL, and SQLite answers that race with "database
    is locked" at once (no busy wait), so the setup is serialised by a lock file beside the log."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock"), timeout=BUSY_TIMEOUT_S):
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(SCHEMA)
    return connection


class InferenceLog:
    """Appends the router's answers to the log; one per server worker, safe across its threads."""

    def __init__(self, path: Path, keep_text: bool) -> None:
        self.path, self.keep_text = path, keep_text
        self.connection = connect(path)
        self.lock = threading.Lock()

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] = os.environ) -> InferenceLog | None:
        """The log named by POLYDISTILL_INFERENCE_LOG, or None when logging is off."""
        path = environment.get(LOG_ENV, "")
        return cls(Path(path), environment.get(TEXT_ENV, "") == "1") if path else None

    def record(self, texts: Sequence[str], answers: Sequence[Mapping[str, Any]], tokenizers: Mapping[str, Any],
               detector: Any) -> None:
        """One row per answered text. For the rows a student answered: the unknown-piece share under that
        language's tokenizer (`tokenizers` by language) and the confidence of `detector` (lingua) in the language."""
        unknown: dict[int, float] = {}
        confidence: dict[int, float] = {}
        for lang, tokenizer in tokenizers.items():
            rows = [row for row, answer in enumerate(answers) if answer["status"] == "ok" and answer["lang"] == lang]
            if rows:
                routed = [texts[row] for row in rows]
                unknown.update(zip(rows, unknown_shares(tokenizer, routed), strict=True))
                confidence.update(zip(rows, language_confidences(detector, routed, lang), strict=True))
        now, request_id = time.time(), uuid.uuid4().hex
        rows = [{"ts": now, "request_id": request_id, **{key: answer.get(key) for key in
                                                          ("lang", "status", "label", "score", "student_version")},
                 "text_sha256": text_hash(text), **text_features(text, unknown.get(row), confidence.get(row)),
                 "text": text if self.keep_text else None}
                for row, (text, answer) in enumerate(zip(texts, answers, strict=True))]
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                self.connection.executemany(f"INSERT INTO inferences ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                                            [tuple(row[column] for column in COLUMNS) for row in rows])
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")


def read_log(path: Path, since: float | None = None) -> Any:
    """The logged rows (a pandas DataFrame), those at or after `since` (a Unix time) when given."""
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"no inference log at {path}: serve with `polydistill serve --log-inference`")
    connection = connect(path)
    try:
        query, arguments = "SELECT * FROM inferences", ()
        if since is not None:
            query, arguments = query + " WHERE ts >= ?", (since,)
        return pd.read_sql_query(query + " ORDER BY ts", connection, params=arguments)
    finally:
        connection.close()
