"""The Great Expectations validation of the prepared splits: one test per failure kind, one success test."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from polydistill.data.validate import DataValidationError, ValidateSettings, non_blank_regex, validate_prepared

LANGUAGES, LABELS = ["en", "es"], ["neg", "pos"]
SETTINGS = ValidateSettings(max_text_chars=60, min_text_chars=1, min_rows_per_language=5, min_rows_per_label=2,
                            sample_rows=3)
# Per language: train 2 neg + 2 pos, validation 1 neg, test 1 pos -> 3 per label, 6 per language.
LAYOUT = {"train": ["neg", "neg", "pos", "pos"], "validation": ["neg"], "test": ["pos"]}


def clean_splits() -> dict[str, pd.DataFrame]:
    """Small splits that meet every expectation under SETTINGS."""
    splits = {}
    for split, labels in LAYOUT.items():
        rows = [{"id": f"{lang}-{split}-{i}", "text": f"{lang} {split} review number {i} is {label}",
                 "label": label, "lang": lang, "source": "fixture"}
                for lang in LANGUAGES for i, label in enumerate(labels)]
        splits[split] = pd.DataFrame(rows)
    return splits


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory) -> Path:
    """One GX project for the whole module: context creation is slow, and reuse tests repeated runs."""
    return tmp_path_factory.mktemp("gx")


def run_validation(tmp_path: Path, gx_root: Path, splits: dict[str, pd.DataFrame]) -> dict:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split, frame in splits.items():
        frame.to_parquet(prepared / f"{split}.parquet", index=False)
    return validate_prepared(prepared, SETTINGS, LANGUAGES, LABELS, gx_root, tmp_path / "report.json")


def failure_of(tmp_path: Path, gx_root: Path, splits: dict[str, pd.DataFrame]) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        run_validation(tmp_path, gx_root, splits)
    error = caught.value
    assert error.data_docs_index.is_file() and str(error.data_docs_index) in str(error)
    assert error.result_path.is_file()
    return error


def test_clean_splits_pass_and_write_report(tmp_path, gx_root):
    report = run_validation(tmp_path, gx_root, clean_splits())
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8")) == report
    assert report["success"] is True and report["total_rows"] == 12
    assert report["row_counts"]["train"]["en"] == {"neg": 2, "pos": 2}
    assert report["row_counts"]["test"]["es"] == {"pos": 1}
    assert len(report["expectations"]) == 18 and all(item["success"] for item in report["expectations"])
    docs = tmp_path / report["data_docs"]
    assert not Path(report["data_docs"]).is_absolute() and docs.name == "index.html" and docs.is_file()


def test_the_report_is_the_same_bytes_on_a_rerun_and_in_another_clone(tmp_path):
    """No timing and no absolute path: validating the same data again, or in a clone elsewhere (its own GX folder),
    leaves the stages that depend on the report up to date."""
    reports = []
    for clone in ("first", "second", "second"):
        root = tmp_path / clone
        root.mkdir(exist_ok=True)
        shutil.rmtree(root / "prepared", ignore_errors=True)
        run_validation(root, root / "gx", clean_splits())
        reports.append((root / "report.json").read_bytes())
    assert reports[0] == reports[1] == reports[2]


def test_missing_column_is_reported_by_gx(tmp_path, gx_root):
    splits = clean_splits()
    splits["test"] = splits["test"].drop(columns="label")
    error = failure_of(tmp_path, gx_root, splits)
    assert "expect_column_to_exist(column='label')" in str(error)


def test_null_text(tmp_path, gx_root):
    splits = clean_splits()
    splits["validation"].loc[0, "text"] = None
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_not_be_null(column='text')" in str(error)
    assert "id='en-validation-0'" in str(error)


def test_whitespace_text(tmp_path, gx_root):
    splits = clean_splits()
    splits["train"].loc[1, "text"] = " \t "
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_match_regex(column='text'" in str(error)
    assert "text=' \\t '" in str(error) and "id='en-train-1'" in str(error)


def test_text_too_long(tmp_path, gx_root):
    splits = clean_splits()
    splits["train"].loc[2, "text"] = "long " * 20
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_value_lengths_to_be_between(column='text', max_value=60)" in str(error)
    assert "id='en-train-2'" in str(error)


def test_label_outside_set(tmp_path, gx_root):
    splits = clean_splits()
    splits["train"].loc[0, "label"] = "neutral"
    error = failure_of(tmp_path, gx_root, splits)
    assert "expect_column_values_to_be_in_set(column='label'" in str(error)
    assert "label='neutral'" in str(error)


def test_unknown_language(tmp_path, gx_root):
    splits = clean_splits()
    splits["test"].loc[0, "lang"] = "fr"
    error = failure_of(tmp_path, gx_root, splits)
    assert "expect_column_values_to_be_in_set(column='lang'" in str(error)
    assert "lang='fr'" in str(error)


def test_duplicate_id(tmp_path, gx_root):
    splits = clean_splits()
    splits["test"].loc[0, "id"] = "en-train-0"
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_be_unique(column='id')" in str(error)
    assert "2 of 12 rows unexpected" in str(error) and "id='en-train-0'" in str(error)


def test_same_text_with_two_labels(tmp_path, gx_root):
    splits = clean_splits()
    splits["train"].loc[2, "text"] = splits["train"].loc[0, "text"]
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_be_between(column='labels_for_text_in_language'" in str(error)
    assert f"text={splits['train'].loc[0, 'text']!r}" in str(error)


def test_text_in_two_splits(tmp_path, gx_root):
    splits = clean_splits()
    splits["test"].loc[0, "text"] = splits["train"].loc[2, "text"]
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_be_between(column='splits_sharing_text'" in str(error)
    assert "split='test'" in str(error) and f"text={splits['train'].loc[2, 'text']!r}" in str(error)


def test_language_below_minimum_rows(tmp_path, gx_root):
    splits = {split: frame[frame["lang"] != "es"] if split != "train" else frame
              for split, frame in clean_splits().items()}
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_be_between(column='language_rows', min_value=5" in str(error)
    assert "lang='es'" in str(error) and "language_rows=4" in str(error)


def test_label_below_minimum_rows(tmp_path, gx_root):
    splits = clean_splits()
    train = splits["train"]
    train.loc[(train["lang"] == "es") & (train["label"] == "neg"), "label"] = "pos"
    error = failure_of(tmp_path, gx_root, splits)
    assert len(error.failures) == 1
    assert "expect_column_values_to_be_between(column='label_rows', min_value=2" in str(error)
    assert "lang='es', label='neg', label_rows=1" in str(error)


def test_failure_removes_stale_report(tmp_path, gx_root):
    stale = tmp_path / "report.json"
    stale.write_text('{"success": true}', encoding="utf-8")
    splits = clean_splits()
    splits["train"].loc[0, "lang"] = "xx"
    failure_of(tmp_path, gx_root, splits)
    assert not stale.exists()


@pytest.mark.parametrize(("min_chars", "text", "found"), [
    (1, " a ", True), (1, " \n ", False), (3, " a b ", True), (3, "  ab  ", False), (4, "abcd", True),
])
def test_non_blank_regex_counts_stripped_characters(min_chars, text, found):
    assert bool(re.search(non_blank_regex(min_chars), text)) is found
