"""Every kind of bad input stops the data plane with a message naming the problem and writes no report.

Each case runs the real stage functions in order (ingest → prepare → validate) on a broken copy of the fixture
corpus. The validation report is what the balance stage depends on, so no report means nothing downstream runs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import FIXTURES, fixture_params

from polydistill.data.archives import FetchSettings
from polydistill.data.ingest import CorpusLoadError, DataSettings, acquire_corpus, read_user_corpus
from polydistill.data.prepare import PrepareSettings, prepare_corpus
from polydistill.data.validate import DataValidationError, ValidateSettings, validate_prepared

Rows = list[dict]


def fixture_rows() -> Rows:
    return [json.loads(line) for line in (FIXTURES / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]


def run_data_plane(root: Path, rows: Rows | bytes, gx_root: Path, params: dict) -> Path:
    """Write the corpus, run the three stages; returns the report path (raises on bad input)."""
    corpus = root / "corpus.jsonl"
    if isinstance(rows, bytes):
        corpus.write_bytes(rows)
    else:
        corpus.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    params["data"]["path"] = "corpus.jsonl"
    acquire_corpus(DataSettings.from_params(params["data"]), FetchSettings(**params["fetch"]), root / "raw", root)
    prepare_corpus(root / "raw/corpus.jsonl", root / "prepared", root / "prepare.json",
                   PrepareSettings(**params["prepare"]))
    report = root / "report.json"
    validate_prepared(root / "prepared", ValidateSettings(**params["validate"]), params["data"]["languages"],
                      params["data"]["labels"], gx_root, report)
    return report


def with_row(change: dict) -> Callable[[Rows], Rows]:
    return lambda rows: [{**rows[0], **change}, *rows[1:]]


def duplicate_id(rows: Rows) -> Rows:
    return [{**row, "id": f"row-{index}"} for index, row in enumerate(rows)][:-1] + [{**rows[-1], "id": "row-0"}]


def conflicting_label(rows: Rows) -> Rows:
    flipped = "negative" if rows[0]["label"] == "positive" else "positive"
    return [*rows, {**rows[0], "label": flipped}]


CASES = {
    "null text": (with_row({"text": None}), {}, ["text", "not_be_null"]),
    "whitespace text": (with_row({"text": "   \t "}), {}, ["text", "match_regex"]),
    "label outside the set": (with_row({"label": "neutral"}), {}, ["label", "in_set", "neutral"]),
    "unknown language": (with_row({"lang": "fr"}), {}, ["lang", "in_set", "fr"]),
    "duplicate id": (duplicate_id, {"columns": {"id": "id"}}, ["id", "unique", "row-0"]),
    "text with two labels": (conflicting_label, {"conflicting_labels": "keep"}, ["labels_for_text_in_language"]),
    "language below minimum": (lambda rows: rows, {"min_rows_per_language": 50}, ["sl", "between"]),
}


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gx")


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_fails_validation_with_a_named_problem(case: str, tmp_path: Path, gx_root: Path) -> None:
    mutate, overrides, expected = CASES[case]
    params = copy.deepcopy(fixture_params(["en", "sl", "zh"]))
    params["data"]["columns"] = {**params["data"]["columns"], **overrides.get("columns", {})}
    params["prepare"]["conflicting_labels"] = overrides.get("conflicting_labels", "drop")
    params["validate"]["min_rows_per_language"] = overrides.get("min_rows_per_language", 30)
    with pytest.raises(DataValidationError) as failure:
        run_data_plane(tmp_path, mutate(fixture_rows()), gx_root, params)
    message = str(failure.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"
    assert not (tmp_path / "report.json").exists()


def test_text_in_two_splits_fails_validation(tmp_path: Path, gx_root: Path) -> None:
    params = fixture_params(["en", "sl", "zh"])
    report = run_data_plane(tmp_path, fixture_rows(), gx_root, params)
    assert json.loads(report.read_text(encoding="utf-8"))["success"] is True
    train = pd.read_parquet(tmp_path / "prepared/train.parquet")
    test = pd.read_parquet(tmp_path / "prepared/test.parquet")
    leaked = train.iloc[[0]].assign(id="leaked-row")
    pd.concat([test, leaked]).to_parquet(tmp_path / "prepared/test.parquet", index=False)
    with pytest.raises(DataValidationError, match="splits_sharing_text"):
        validate_prepared(tmp_path / "prepared", ValidateSettings(**params["validate"]), ["en", "sl", "zh"],
                          params["data"]["labels"], gx_root, report)
    assert not report.exists()


GOOD_LINE = b'{"text": "fine", "label": "positive", "lang": "en"}\n'
UNREADABLE = {
    "missing column": (b'{"text": "fine", "label": "positive"}\n', "jsonl", "'lang'"),
    "invalid UTF-8": (b'{"text": "caf\xe9", "label": "positive", "lang": "en"}\n', "jsonl", "not valid UTF-8.*line 1"),
    "truncated JSONL line": (GOOD_LINE * 2 + b'{"text": "cut off', "jsonl", r"line 3, column \d+: Unterminated"),
    "JSONL line not an object": (GOOD_LINE + b'["a list"]\n', "jsonl", "line 2: expected a JSON object"),
    "empty CSV": (b"", "csv", "is empty"),
    "header-only CSV": (b"text,label,lang\n", "csv", "no data rows"),
    "malformed CSV": (b'text,label,lang\nfine,positive,en\n"a","b","c","d","e"\n', "csv", "line 3"),
}


@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
def test_unreadable_input_fails_at_load_naming_the_line(case: str, tmp_path: Path) -> None:
    corpus, file_format, expected = UNREADABLE[case]
    params = fixture_params(["en"])
    params["data"]["format"] = file_format
    with pytest.raises(CorpusLoadError, match=expected):
        run_data_plane(tmp_path, corpus, tmp_path / "gx", params)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "prepared").exists()


def test_a_byte_order_mark_and_float_labels_are_read(tmp_path: Path) -> None:
    rows = [{"text": f"text number {index}", "label": float(index % 2), "lang": "en"} for index in range(4)]
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows).encode())
    data = {**fixture_params(["en"])["data"], "source": "file", "path": str(path), "format": "jsonl",
            "label_map": {0: "negative", 1: "positive"}}
    frame = read_user_corpus(DataSettings.from_params(data), tmp_path)
    assert frame["label"].tolist() == ["negative", "positive"] * 2 and frame["text"][0] == "text number 0"
