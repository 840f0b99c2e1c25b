"""Validate the prepared splits with a Great Expectations 1.x suite before anything trains on them.

Two frames are validated, each by its own GX checkpoint in a file context at ``gx_root``:

* ``prepared_rows``: every row of train/validation/test concatenated, with a ``split`` column and two derived
  columns: ``splits_sharing_text`` (how many splits hold the row's text) and ``labels_for_text_in_language``
  (how many labels the row's text carries within its language).
* ``language_label_counts``: one row per configured (language, label) with its row count and its language's
  row count, over all splits.

Every rule is a GX expectation evaluated by GX; the derived columns only turn cross-row rules into row values.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from polydistill.config import set_offline_environment

SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("id", "text", "label", "lang", "split")
SAMPLE_COLUMNS = ("id", "split", "lang", "label", "text")
DATASOURCE_NAME = "polydistill_prepared"
ROWS_NAME = "prepared_rows"
COUNTS_NAME = "language_label_counts"
FAILED_RESULT_NAME = "last_failed_validation.json"
SAMPLE_TEXT_CHARS = 80


@dataclass(frozen=True)
class ValidateSettings:
    """params.yaml validate: text length bounds, minimum rows per language and per (language, label), and how many
    offending rows a failure shows."""

    min_text_chars: int
    max_text_chars: int
    min_rows_per_language: int
    min_rows_per_label: int
    sample_rows: int


class DataValidationError(RuntimeError):
    """The prepared data broke at least one expectation; the message lists each failure with sample rows."""

    def __init__(self, failures: list[str], data_docs_index: Path, result_path: Path) -> None:
        self.failures = failures
        self.data_docs_index = data_docs_index
        self.result_path = result_path
        lines = [f"{len(failures)} data expectation(s) failed:", *failures,
                 f"Data Docs: {data_docs_index}", f"Full validation result: {result_path}"]
        super().__init__("\n".join(lines))


def validate_prepared(prepared_dir: Path, settings: ValidateSettings, languages: Sequence[str],
                      labels: Sequence[str], gx_root: Path, report_path: Path) -> dict:
    """Validate ``prepared_dir/{train,validation,test}.parquet``; write and return the report, or raise.

    languages and labels are the configured sets (params.yaml data). On failure the stale ``report_path`` is
    removed, the full result is written under ``gx_root/gx/uncommitted/`` and DataValidationError is raised. A missing
    split file raises FileNotFoundError.
    The report holds only what the data decides (its Data Docs path relative to the report's folder, no timings), so
    the same data gives the same bytes in any clone and a rerun leaves the stages after it up to date.
    """
    started = time.perf_counter()
    report_path = Path(report_path)
    report_path.unlink(missing_ok=True)
    rows = read_splits(Path(prepared_dir))
    counts = language_label_counts(rows, languages, labels)
    frames = {ROWS_NAME: rows, COUNTS_NAME: counts}
    suites = {ROWS_NAME: row_expectations(settings, languages, labels), COUNTS_NAME: count_expectations(settings)}

    context, datasource = open_context(Path(gx_root))
    results = {name: run_checkpoint(context, datasource, name, suites[name], frame, settings.sample_rows)
               for name, frame in frames.items()}
    docs_index = data_docs_index(context)
    failures = [describe_failure(result, frames[name], settings.sample_rows)
                for name, suite_result in results.items() for result in suite_result.results if not result.success]
    if failures:
        result_path = write_failed_results(context, results)
        print(f"Data validation failed; Data Docs: {docs_index}; result: {result_path}")
        raise DataValidationError(failures, docs_index, result_path)

    report = {
        "success": True,
        "expectations": [summarize_result(name, result) for name, suite_result in results.items()
                         for result in suite_result.results],
        "row_counts": split_language_label_counts(rows),
        "total_rows": len(rows),
        "data_docs": os.path.relpath(docs_index, report_path.parent),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"Data validation passed in {time.perf_counter() - started:.1f} s; report: {report_path}; "
          f"Data Docs: {docs_index}")
    return report


def read_splits(prepared_dir: Path) -> pd.DataFrame:
    """Concatenate the splits with a ``split`` column (columns every split has) and the derived columns."""
    parts = [pd.read_parquet(prepared_dir / f"{split}.parquet").assign(split=split) for split in SPLITS]
    rows = pd.concat(parts, join="inner", ignore_index=True)
    if "text" in rows:
        rows["splits_sharing_text"] = rows.groupby("text")["split"].transform("nunique")
    if {"text", "lang", "label"} <= set(rows.columns):
        rows["labels_for_text_in_language"] = rows.groupby(["lang", "text"])["label"].transform("nunique")
    return rows


def language_label_counts(rows: pd.DataFrame, languages: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Rows per configured (language, label) and per language over all splits; zero where absent."""
    grid = pd.MultiIndex.from_product([languages, labels], names=["lang", "label"])
    if {"lang", "label"} <= set(rows.columns):
        observed = rows.groupby(["lang", "label"]).size()
    else:
        observed = pd.Series(dtype="int64")
    counts = observed.reindex(grid, fill_value=0).rename("label_rows").reset_index()
    counts["language_rows"] = counts.groupby("lang")["label_rows"].transform("sum")
    return counts


def row_expectations(settings: ValidateSettings, languages: Sequence[str], labels: Sequence[str]) -> list:
    """The expectations every prepared row must meet."""
    import great_expectations.expectations as gxe

    min_chars = max(int(settings.min_text_chars), 1)
    expectations = [gxe.ExpectColumnToExist(column=column, description=f"column '{column}' exists")
                    for column in REQUIRED_COLUMNS]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"no null {column}")
                     for column in ("id", "text", "label", "lang")]
    expectations += [
        gxe.ExpectColumnValuesToMatchRegex(
            column="text", regex=non_blank_regex(min_chars),
            description=f"text has at least {min_chars} characters after stripping whitespace"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", max_value=settings.max_text_chars,
            description=f"text has at most {settings.max_text_chars} characters"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels),
                                        description="label is one of the configured labels"),
        gxe.ExpectColumnValuesToBeInSet(column="lang", value_set=list(languages),
                                        description="lang is one of the configured languages"),
        gxe.ExpectColumnValuesToBeUnique(column="id", description="id is unique over all splits"),
        gxe.ExpectColumnValuesToBeBetween(column="splits_sharing_text", min_value=1, max_value=1,
                                          description="a text appears in one split only"),
        gxe.ExpectColumnValuesToBeBetween(column="labels_for_text_in_language", min_value=1, max_value=1,
                                          description="a text carries one label within its language"),
    ]
    return expectations


def count_expectations(settings: ValidateSettings) -> list:
    """The minimum row counts per language and per (language, label)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="language_rows", min_value=settings.min_rows_per_language,
            description=f"each language has at least {settings.min_rows_per_language} rows over all splits"),
        gxe.ExpectColumnValuesToBeBetween(
            column="label_rows", min_value=settings.min_rows_per_label,
            description=f"each label has at least {settings.min_rows_per_label} rows per language"),
    ]


def non_blank_regex(min_chars: int) -> str:
    """A regex found in a text iff the text, stripped of surrounding whitespace, has at least ``min_chars`` chars."""
    if min_chars <= 1:
        return r"\S"
    return r"\S[\s\S]{%d,}\S" % (min_chars - 2)


def open_context(gx_root: Path) -> tuple:
    """The GX file context at ``gx_root`` (created if missing) and its pandas data source, emptied of old assets."""
    set_offline_environment()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx_root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.save()
    datasource = context.data_sources.add_or_update_pandas(name=DATASOURCE_NAME)
    return context, datasource


def run_checkpoint(context, datasource, name: str, expectations: list, frame: pd.DataFrame, sample_rows: int):
    """Add the asset and add or update the suite, validation definition and checkpoint ``name``; validate ``frame``."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    batch_definition = datasource.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=name, validation_definitions=[validation],
        actions=[UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": max(sample_rows, 1)}))
    checkpoint_result = checkpoint.run(batch_parameters={"dataframe": frame})
    suite_result = next(iter(checkpoint_result.run_results.values()))
    position = {expectation.id: index for index, expectation in enumerate(suite.expectations)}
    suite_result.results.sort(key=lambda result: position.get(result.expectation_config.id, len(position)))
    return suite_result


def data_docs_index(context) -> Path:
    """Path of the local Data Docs index.html."""
    url = context.get_docs_sites_urls()[0]["site_url"]
    return Path(url2pathname(urlparse(url).path))


def describe_failure(result, frame: pd.DataFrame, sample_rows: int) -> str:
    """One failed expectation: rule, column, unexpected count and sample offending rows (or the error it raised)."""
    config = result.expectation_config
    kwargs = {key: value for key, value in config.kwargs.items() if key != "batch_id"}
    rule = f"{config.type}({', '.join(f'{key}={value!r}' for key, value in kwargs.items())})"
    header = f"- {config.description or config.type}: {rule}"
    error = exception_message(result.exception_info)
    if error:
        return f"{header}\n    could not be evaluated: {error}"
    details = result.result
    if config.type == "expect_column_to_exist":
        return f"{header}\n    columns present in every split: {', '.join(map(str, frame.columns))}"
    if "unexpected_count" not in details:
        return f"{header}\n    observed: {details.get('observed_value')!r}"
    lines = [f"{header}\n    {details['unexpected_count']} of {details['element_count']} rows unexpected"]
    indices = details.get("partial_unexpected_index_list") or []
    lines += [f"    {sample_row(frame, index, kwargs.get('column'))}" for index in indices[:sample_rows]]
    return "\n".join(lines)


def sample_row(frame: pd.DataFrame, index: int, column: str | None) -> str:
    """An offending row as ``key=value`` pairs: identity columns, the checked column, text truncated."""
    shown = [name for name in frame.columns if name in SAMPLE_COLUMNS or name == column]
    if not set(shown) & set(SAMPLE_COLUMNS):
        shown = list(frame.columns)
    parts = []
    for name, value in frame.loc[index, shown].to_dict().items():
        if name == "text" and isinstance(value, str) and len(value) > SAMPLE_TEXT_CHARS:
            value = value[:SAMPLE_TEXT_CHARS] + "…"
        parts.append(f"{name}={value!r}")
    return ", ".join(parts)


def exception_message(exception_info: dict) -> str | None:
    """The message of an exception GX caught while evaluating an expectation, if any."""
    if exception_info.get("raised_exception"):
        return exception_info.get("exception_message")
    for info in exception_info.values():
        if isinstance(info, dict) and info.get("raised_exception"):
            return info.get("exception_message")
    return None


def write_failed_results(context, results: dict) -> Path:
    """Write every suite's full validation result as one JSON file in the GX project's uncommitted folder."""
    path = Path(context.root_directory) / "uncommitted" / FAILED_RESULT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {name: suite_result.to_json_dict() for name, suite_result in results.items()}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def summarize_result(suite_name: str, result) -> dict:
    """A short, JSON-ready summary of one expectation's outcome."""
    config = result.expectation_config
    details = result.result
    return {
        "suite": suite_name,
        "expectation": config.type,
        "description": config.description,
        "kwargs": {key: value for key, value in config.kwargs.items() if key != "batch_id"},
        "success": bool(result.success),
        "element_count": details.get("element_count"),
        "unexpected_count": details.get("unexpected_count"),
    }


def split_language_label_counts(rows: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """Row counts as ``{split: {lang: {label: n}}}``."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (split, lang, label), n in rows.groupby(["split", "lang", "label"]).size().items():
        counts.setdefault(split, {}).setdefault(lang, {})[label] = int(n)
    return counts
