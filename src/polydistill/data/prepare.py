"""Normalise, deduplicate and split the raw corpus without leakage.

Output: train / validation / test Parquet files with columns id, text, label, lang, source, and a summary of rows
per language × label × split. Rows are never silently repaired: a null text or an unknown label passes through
to the validate stage, which names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polydistill.data.text_key import comparison_key

SPLITS = ("train", "validation", "test")
COLUMNS = ("id", "text", "label", "lang", "source")
CONFLICT_POLICIES = ("drop", "keep")


@dataclass(frozen=True)
class PrepareSettings:
    """params.yaml prepare: the split's seed and fractions, and what becomes of a text seen with two labels in one
    language (drop: removed; keep: left for validate to reject)."""

    seed: int
    validation_fraction: float
    test_fraction: float
    conflicting_labels: str

    def __post_init__(self) -> None:
        if self.conflicting_labels not in CONFLICT_POLICIES:
            raise ValueError(f"prepare.conflicting_labels '{self.conflicting_labels}': use "
                             f"{' or '.join(CONFLICT_POLICIES)}")


def read_raw_corpus(path: Path) -> pd.DataFrame:
    """The raw JSONL corpus, every value kept as read (strings stay strings)."""
    frame = pd.read_json(path, lines=True, dtype=False)
    for column in ("text", "label", "lang", "source"):
        if column not in frame.columns:
            frame[column] = None
    return frame


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Strip surrounding whitespace from text; labels and languages as strings (nulls kept)."""
    frame = frame.copy()
    for column in ("text", "label", "lang", "source"):
        frame[column] = frame[column].map(lambda value: str(value).strip() if pd.notna(value) else None)
    return frame


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove exact repeats of (lang, text, label); returns the rows kept and how many were removed."""
    deduplicated = frame.drop_duplicates(subset=["lang", "text", "label"], keep="first")
    return deduplicated, len(frame) - len(deduplicated)


def conflicting_texts(frame: pd.DataFrame) -> pd.Series:
    """Mask of rows whose text carries more than one label within its language."""
    labels_per_text = frame.groupby(["lang", "text"], dropna=False)["label"].transform("nunique")
    return (labels_per_text > 1) & frame["text"].notna()


def assign_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep user ids when given; otherwise a content hash of (lang, label, text), stable across runs."""
    frame = frame.copy()
    content_ids = [
        f"{lang}-" + hashlib.sha1(f"{lang}\x1f{label}\x1f{text}".encode()).hexdigest()[:16]
        for lang, label, text in zip(frame["lang"], frame["label"], frame["text"])
    ]
    if "id" in frame.columns:
        frame["id"] = [str(given) if pd.notna(given) else generated
                       for given, generated in zip(frame["id"], content_ids)]
    else:
        frame["id"] = content_ids
    return frame


def split_assignment(frame: pd.DataFrame, validation_fraction: float, test_fraction: float,
                     seed: int) -> pd.Series:
    """Stratified split by (lang, label); every text goes where the first text with its comparison key went, so
    copies and near-duplicates (case, punctuation, whitespace, URLs) never cross splits."""
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=frame.index, dtype=object)
    for _, group in frame.groupby(["lang", "label"], dropna=False, sort=True):
        order = group.index.to_numpy()[rng.permutation(len(group))]
        n_test = int(round(len(group) * test_fraction))
        n_validation = int(round(len(group) * validation_fraction))
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_validation]] = "validation"
    return split.groupby(split_keys(frame)).transform("first")


def split_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's comparison key; a null text keys on its id (nulls are not one text)."""
    return frame["text"].map(comparison_key, na_action="ignore").fillna("\x00null\x00" + frame["id"])


def near_duplicate_rows(frame: pd.DataFrame) -> int:
    """Rows sharing their comparison key with a row of different text (kept in one split by split_assignment)."""
    texts_per_key = frame.groupby(split_keys(frame))["text"].transform("nunique")
    return int((texts_per_key > 1).sum())


def prepare_corpus(raw_path: Path, output_dir: Path, summary_path: Path, settings: PrepareSettings) -> dict:
    """Normalise, deduplicate, resolve conflicting labels, split, and write the splits and summary."""
    raw = read_raw_corpus(raw_path)
    frame, duplicates = drop_duplicates(normalise(raw))
    conflicts = conflicting_texts(frame)
    if settings.conflicting_labels == "drop":
        frame = frame[~conflicts]
    frame = assign_ids(frame).sort_values(["lang", "id"], kind="stable").reset_index(drop=True)
    frame["split"] = split_assignment(frame, settings.validation_fraction, settings.test_fraction, settings.seed)
    write_splits(frame, output_dir)
    summary = {
        "raw_rows": len(raw),
        "duplicates_removed": duplicates,
        "conflicting_rows": int(conflicts.sum()),
        "conflicting_rows_dropped": int(conflicts.sum()) if settings.conflicting_labels == "drop" else 0,
        "near_duplicate_rows": near_duplicate_rows(frame),
        "rows": split_counts(frame),
    }
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def write_splits(frame: pd.DataFrame, output_dir: Path) -> None:
    """One Parquet file per split with all-string columns."""
    output_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(column, pa.string()) for column in COLUMNS])
    for name in SPLITS:
        rows = frame.loc[frame["split"] == name, list(COLUMNS)]
        table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
        pq.write_table(table, output_dir / f"{name}.parquet")


def split_counts(frame: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """Rows per lang → label → split (plus a total per lang and label)."""
    counts = frame.fillna({"lang": "<null>", "label": "<null>"}).groupby(["lang", "label", "split"]).size()
    summary: dict[str, dict[str, dict[str, int]]] = {}
    for (lang, label, split), count in counts.items():
        cell = summary.setdefault(lang, {}).setdefault(label, {name: 0 for name in SPLITS})
        cell[split] = int(count)
    for labels in summary.values():
        for cell in labels.values():
            cell["total"] = sum(cell[name] for name in SPLITS)
    return summary
