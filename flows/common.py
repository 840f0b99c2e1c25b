"""What every stage flow shares: the offline environment, params, paths, and a clean exit on bad input."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from prefect import Flow

from polydistill.config import load_params, project_root


def stage_context() -> tuple[Path, dict[str, Any]]:
    """The project root and the whole params.yaml."""
    root = project_root()
    return root, load_params(root / "params.yaml")


def show_core_logs() -> None:
    """The core package's INFO lines (progress, resumed runs) in the terminal and in the Prefect UI.

    Prefect gives the `polydistill` logger its API handler and the records propagate to Prefect's console handler,
    but the logger inherits the root's WARNING level: without this, its INFO lines go nowhere.
    """
    logging.getLogger("polydistill").setLevel(logging.INFO)


def run_stage(flow: Flow, *arguments: Any) -> None:
    """Run a stage flow; a known input error ends the process with its message and exit status 1."""
    from polydistill.data.archives import ArchiveDownloadError, ArchiveHashMismatch
    from polydistill.data.ingest import CorpusLoadError
    from polydistill.data.validate import DataValidationError
    from polydistill.model.soft_labels import SoftLabelMismatch

    show_core_logs()
    started = time.perf_counter()
    try:
        flow(*arguments)
    except (DataValidationError, CorpusLoadError, ArchiveHashMismatch, ArchiveDownloadError,
            SoftLabelMismatch) as error:
        print(f"\nstage {flow.name} failed: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"stage {flow.name} finished in {time.perf_counter() - started:.1f} s")
