"""prepare: normalisation, deduplication, conflicting labels, and a leak-free stratified split."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from polydistill.data.prepare import SPLITS, PrepareSettings, prepare_corpus

SETTINGS = PrepareSettings(seed=3, validation_fraction=0.1, test_fraction=0.2, conflicting_labels="drop")


def write_raw(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_splits(directory: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(directory / f"{name}.parquet").assign(split=name) for name in SPLITS])


def test_dedupes_strips_and_drops_conflicting_texts(tmp_path: Path) -> None:
    rows = [{"text": f"review {i}", "label": "positive" if i % 2 else "negative", "lang": "en", "source": "s"}
            for i in range(100)]
    rows += [{"text": "  review 1 ", "label": "positive", "lang": "en", "source": "s"},   # duplicate after strip
             {"text": "好评", "label": "positive", "lang": "zh", "source": "s"},
             {"text": "好评", "label": "negative", "lang": "zh", "source": "s"},           # conflicting
             {"text": "review 1", "label": "positive", "lang": "sl", "source": "s"}]     # same text, other language
    summary = prepare_corpus(write_raw(tmp_path / "raw.jsonl", rows), tmp_path / "out", tmp_path / "s.json", SETTINGS)
    frame = read_splits(tmp_path / "out")
    assert summary["duplicates_removed"] == 1
    assert summary["conflicting_rows_dropped"] == 2
    assert "好评" not in set(frame["text"])
    assert len(frame) == 101 and frame["id"].is_unique
    assert frame.groupby("text")["split"].nunique().max() == 1, "a text appears in two splits"
    assert summary["rows"]["en"]["positive"] == {"train": 35, "validation": 5, "test": 10, "total": 50}


def test_keep_policy_leaves_conflicts_for_validation(tmp_path: Path) -> None:
    rows = [{"text": "好评", "label": label, "lang": "zh", "source": "s"} for label in ("positive", "negative")]
    summary = prepare_corpus(write_raw(tmp_path / "raw.jsonl", rows), tmp_path / "out", tmp_path / "s.json",
                             replace(SETTINGS, conflicting_labels="keep"))
    assert summary["conflicting_rows"] == 2 and summary["conflicting_rows_dropped"] == 0
    assert len(read_splits(tmp_path / "out")) == 2


def test_an_unknown_conflict_policy_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="conflicting_labels 'dorp': use drop or keep"):
        replace(SETTINGS, conflicting_labels="dorp")


def test_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": ["a", "b", "c"][i % 3], "lang": ["en", "zh"][i % 2], "source": "s"}
            for i in range(600)]
    raw = write_raw(tmp_path / "raw.jsonl", rows)
    prepare_corpus(raw, tmp_path / "one", tmp_path / "1.json", SETTINGS)
    prepare_corpus(raw, tmp_path / "two", tmp_path / "2.json", SETTINGS)
    one, two = read_splits(tmp_path / "one"), read_splits(tmp_path / "two")
    pd.testing.assert_frame_equal(one.reset_index(drop=True), two.reset_index(drop=True))
    shares = one.groupby(["lang", "label"])["split"].value_counts(normalize=True).unstack()
    assert ((shares["test"] - 0.2).abs() < 0.01).all()
    assert ((shares["validation"] - 0.1).abs() < 0.01).all()


def test_null_text_and_unknown_label_pass_through_for_validation(tmp_path: Path) -> None:
    rows = [{"text": None, "label": "positive", "lang": "en", "source": "s"},
            {"text": "fine", "label": "meh", "lang": "en", "source": "s"}]
    prepare_corpus(write_raw(tmp_path / "raw.jsonl", rows), tmp_path / "out", tmp_path / "s.json", SETTINGS)
    frame = read_splits(tmp_path / "out")
    assert frame["text"].isna().sum() == 1 and "meh" in set(frame["label"])


def test_near_duplicates_stay_in_one_split(tmp_path: Path) -> None:
    """Case, punctuation, whitespace and URL variants of a text share its split, whatever the seed puts first."""
    variants = [("a pretentious mess", "A pretentious mess.", "a  pretentious MESS!!"),
                ("great phone https://t.co/abc", "Great phone https://t.co/xyz", "great phone www.example.com/p")]
    rows = [{"text": f"review number {i}", "label": "positive" if i % 2 else "negative", "lang": "en", "source": "s"}
            for i in range(60)]
    for group, label in zip(variants, ("negative", "positive")):
        rows += [{"text": text, "label": label, "lang": "en", "source": "s"} for text in group]
    for seed in range(8):
        summary = prepare_corpus(write_raw(tmp_path / "raw.jsonl", rows), tmp_path / "out", tmp_path / "s.json",
                                 replace(SETTINGS, seed=seed))
        frame = read_splits(tmp_path / "out").set_index("text")
        assert all(frame.loc[list(group), "split"].nunique() == 1 for group in variants), f"seed {seed}"
        assert summary["near_duplicate_rows"] == 6
