"""Prefect tasks of the transfer text: unlabelled in-language text and the students' transfer sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from tasks.retry import retry_transient


@task(name="unlabelled", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def unlabelled_task(settings: dict[str, Any], fetch: dict[str, Any], languages: list[str], output_dir: Path,
                    root: Path) -> dict:
    """Fetch (embedded) or read (a user's file) unlabelled in-language text into output_dir."""
    from polydistill.data.archives import FetchSettings
    from polydistill.data.unlabelled import UnlabelledSettings, acquire_unlabelled

    provenance = acquire_unlabelled(UnlabelledSettings(**settings), FetchSettings(**fetch), languages, output_dir, root)
    get_run_logger().info("unlabelled texts per source: %s",
                          {name: entry["rows_written"] for name, entry in provenance["sources"].items()})
    return provenance


@task(name="transfer")
def transfer_task(train_path: Path, held_out_paths: list[Path], unlabelled_path: Path, output_dir: Path,
                  report_path: Path, settings: dict[str, Any]) -> dict:
    """Compose the KD transfer set and the labelled CE set of every language."""
    from polydistill.data.transfer import TransferSettings, build_transfer_set

    report = build_transfer_set(train_path, held_out_paths, unlabelled_path, output_dir, report_path,
                                TransferSettings.from_params(settings))
    get_run_logger().info("transfer rows by language and source: %s",
                          {lang: {key: entry[key] for key in ("labelled", "unlabelled", "augmented")}
                           for lang, entry in report["languages"].items()})
    return report
