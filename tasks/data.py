"""Prefect tasks of the data plane: fetch, prepare, validate, balance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from tasks.retry import retry_transient


@task(name="fetch", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def fetch_task(data: dict[str, Any], fetch: dict[str, Any], output_dir: Path, root: Path) -> dict:
    """Download (embedded) or read (user data) the corpus into output_dir."""
    from polydistill.data.archives import FetchSettings
    from polydistill.data.ingest import DataSettings, acquire_corpus

    provenance = acquire_corpus(DataSettings.from_params(data), FetchSettings(**fetch), output_dir, root)
    get_run_logger().info("raw corpus written to %s", output_dir)
    return provenance


@task(name="prepare")
def prepare_task(raw_path: Path, output_dir: Path, summary_path: Path, settings: dict[str, Any]) -> dict:
    """Normalise, deduplicate and split."""
    from polydistill.data.prepare import PrepareSettings, prepare_corpus

    summary = prepare_corpus(raw_path, output_dir, summary_path, PrepareSettings(**settings))
    get_run_logger().info("removed %d duplicates, %d conflicting rows; splits in %s",
                          summary["duplicates_removed"], summary["conflicting_rows_dropped"], output_dir)
    return summary


@task(name="validate")
def validate_task(prepared_dir: Path, settings: dict[str, Any], languages: list[str], labels: list[str],
                  gx_root: Path, report_path: Path) -> dict:
    """Run the Great Expectations suite; raises DataValidationError on any failed expectation."""
    from polydistill.data.validate import ValidateSettings, validate_prepared

    report = validate_prepared(prepared_dir, ValidateSettings(**settings), languages, labels, gx_root, report_path)
    get_run_logger().info("all expectations passed; report at %s", report_path)
    return report


@task(name="balance")
def balance_task(train_path: Path, output_dir: Path, report_path: Path, plot_dir: Path,
                 settings: dict[str, Any]) -> dict:
    """Temperature-sample the teacher and transfer sets."""
    from polydistill.data.balance import BalanceSettings, balance_sets

    return balance_sets(train_path, output_dir, report_path, plot_dir, BalanceSettings.from_params(settings))
