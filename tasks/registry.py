"""Prefect tasks of the operations plane: log the pipeline run, gate each challenger, attach model cards, rebuild
the router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from tasks.retry import retry_transient


@task(name="log-pipeline-run", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def log_pipeline_run_task(root: Path, params: dict[str, Any]) -> dict:
    """One parent MLflow run with nested teacher and language runs; each KD student registered as challenger."""
    from polydistill.ops.pipeline_run import log_pipeline_run

    record = log_pipeline_run(root, params)
    get_run_logger().info("MLflow run %s registered %s", record["run_id"],
                          {lang: entry["version"] + (" (reused)" if entry["reused"] else "")
                           for lang, entry in record["languages"].items()})
    return record


@task(name="promote")
def promote_task(root: Path, settings: dict[str, Any], lang: str, version: str) -> dict:
    """Run the promotion gate on a new version and log every reason."""
    from polydistill.ops.promotion import promote

    result = promote(root, settings, lang, version)
    logger = get_run_logger()
    logger.info("%s version %s %s", lang, version, "promoted to champion" if result.promoted else "stays challenger")
    for reason in result.reasons:
        logger.info("  %s", reason)
    return result.as_dict()


@task(name="model-card", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def model_card_task(root: Path, settings: dict[str, Any], lang: str, version: str, decision: dict | None) -> str:
    """Attach the version's model card (with the gate's decision) in MLflow; show it in the Prefect UI too."""
    from polydistill.ops.model_card import attach_model_card

    card = attach_model_card(root, settings, lang, version, decision)
    create_markdown_artifact(card, key=f"model-card-{lang.lower()}", description=f"{lang} student version {version}")
    get_run_logger().info("%s version %s: model card attached", lang, version)
    return card


@task(name="router", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def router_task(root: Path, settings: dict[str, Any], languages: list[str]) -> str | None:
    """Bundle the champions into a new router version (None while a language has no champion)."""
    from polydistill.ops.serving import register_router

    version = register_router(root, settings, languages)
    get_run_logger().info("router version %s", version)
    return version
