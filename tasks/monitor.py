"""Prefect tasks of the monitor flow: read the inference log, build the report, log it to MLflow, trigger the
pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from tasks.retry import retry_transient


@task(name="monitor-report")
def monitor_report_task(root: Path, params: dict[str, Any]) -> dict:
    """The per-language report over the window of the log, the served students' tokenizers and the teacher."""
    import pandas as pd

    from polydistill.model.shadow import ShadowTeacher
    from polydistill.model.soft_labels import SoftLabelSettings
    from polydistill.ops.monitor import MonitorSettings, monitor_traffic, read_window, served_versions
    from polydistill.ops.monitor_report import summary_rows
    from polydistill.ops.router import language_detector
    from polydistill.ops.serving import student_tokenizers

    settings = MonitorSettings.from_params(params["monitor"])
    log, window = read_window(root, settings)
    tokenizers = student_tokenizers(root, params["registry"], served_versions(log))
    teacher = ShadowTeacher(root / "models/teacher", root / "models/tfidf", root / "data/soft_labels",
                            SoftLabelSettings.from_params(params["soft_labels"]))
    train = pd.read_parquet(root / "data/prepared/train.parquet")
    languages = params["data"]["languages"]
    report = monitor_traffic(log, train, tokenizers, language_detector(languages), teacher, languages,
                             params["data"]["labels"], settings)
    report["window"] = window
    logger = get_run_logger()
    for lang, entry in report["languages"].items():
        logger.info("%s: %d rows, %s", lang, entry["rows"],
                    "; ".join(entry["reasons"]) if entry["reasons"] else "no drift, label shift or disagreement")
    columns = ["lang", "rows", "answered", "label shift", "mean confidence", "drifted features",
               "teacher disagreement", "shadow rows", "verdict"]
    create_table_artifact([dict(zip(columns, row, strict=True)) for row in summary_rows(report)], key="monitor",
                          description=f"Served traffic vs training over {window}")
    return report


@task(name="monitor-write")
def write_monitor_report_task(root: Path, params: dict[str, Any], report: dict) -> list[Path]:
    """reports/monitor.html and .json (params monitor.report)."""
    from polydistill.ops.monitor_report import write_report

    return write_report(report, root / params["monitor"]["report"])


@task(name="monitor-mlflow", retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=retry_transient)
def log_monitor_task(root: Path, settings: dict[str, Any], report: dict, files: list[Path]) -> str:
    """The report's metrics and files as an MLflow `monitor` run."""
    from polydistill.ops.tracking import log_monitor_run

    run_id = log_monitor_run(root, settings, report, files)
    get_run_logger().info("MLflow monitor run %s", run_id)
    return run_id


@task(name="trigger-pipeline")
def trigger_pipeline_task(deployment: str, flagged: list[str]) -> str:
    """Start a run of the pipeline deployment (needs the Prefect server that serves it); returns the flow run id."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    try:
        run = run_deployment(deployment, timeout=0, tags=["monitor-trigger"])
    except ObjectNotFound:
        api = PREFECT_API_URL.value() or "a temporary server"
        raise LookupError(f"no deployment {deployment} on the Prefect API ({api}): serve it with `polydistill "
                          "schedule` against a Prefect server and point PREFECT_API_URL at that server") from None
    get_run_logger().warning("flagged %s: started %s (flow run %s)", ", ".join(flagged), deployment, run.id)
    return str(run.id)
