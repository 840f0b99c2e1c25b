"""The tasks' retry policy: retry what may pass on a second try (network, a locked database), never a bad input
file or a hash mismatch, which fail the same way every time."""

from __future__ import annotations

from typing import Any


def permanent_errors() -> tuple[type[Exception], ...]:
    """Errors that fail the same way on every try (imported here: the core's data modules load pandas)."""
    from polydistill.data.archives import ArchiveHashMismatch
    from polydistill.data.ingest import CorpusLoadError

    return CorpusLoadError, ArchiveHashMismatch, FileNotFoundError, KeyError, TypeError


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: True (go on retrying) unless the failure is a permanent error."""
    return not isinstance(state.result(raise_on_failure=False), permanent_errors())
