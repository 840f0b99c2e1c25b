"""The Prefect tasks retry only what may pass on a second try."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from polydistill.data.archives import ArchiveDownloadError, ArchiveHashMismatch
from polydistill.data.ingest import CorpusLoadError
from tasks.data import fetch_task
from tasks.model import pretrained_task
from tasks.registry import log_pipeline_run_task, router_task
from tasks.retry import retry_transient
from tasks.transfer import unlabelled_task


@pytest.mark.parametrize(("error", "retried"), [
    (CorpusLoadError("corpus.jsonl line 3, column 17: Unterminated string"), False),
    (ArchiveHashMismatch("sha256 differs"), False),
    (FileNotFoundError("no such file"), False),
    (ArchiveDownloadError("connection reset"), True),
    (OSError("database is locked"), True),
])
def test_only_transient_failures_are_retried(error: Exception, retried: bool) -> None:
    assert retry_transient(None, None, Failed(data=error)) is retried


@pytest.mark.parametrize("task", [fetch_task, pretrained_task, unlabelled_task, log_pipeline_run_task, router_task])
def test_every_retried_task_uses_the_policy(task: object) -> None:
    assert task.retries == 2 and task.retry_condition_fn is retry_transient
