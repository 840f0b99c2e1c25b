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


# The core's input errors (module, class): a failed stage reports them as its message, not a traceback.
INPUT_ERRORS = (("polydistill.data.archives", "ArchiveDownloadError"),
                ("polydistill.data.archives", "ArchiveHashMismatch"),
                ("polydistill.data.ingest", "CorpusLoadError"),
                ("polydistill.data.validate", "DataValidationError"),
                ("polydistill.model.soft_labels", "SoftLabelMismatch"))


def loaded_input_errors() -> tuple[type[BaseException], ...]:
    """The input-error classes of the core modules this process has imported. A module it never imported cannot have
    raised, so a data stage need not import the soft-label module (scikit-learn, torch: 1.5 s) to catch its error."""
    return tuple(getattr(sys.modules[module], name) for module, name in INPUT_ERRORS if module in sys.modules)


def run_stage(flow: Flow, *arguments: Any) -> None:
    """Run a stage flow; a known input error ends the process with its message and exit status 1."""
    show_core_logs()
    started = time.perf_counter()
    try:
        flow(*arguments)
    except Exception as error:
        if not isinstance(error, loaded_input_errors()):
            raise
        print(f"\nstage {flow.name} failed: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"stage {flow.name} finished in {time.perf_counter() - started:.1f} s")
