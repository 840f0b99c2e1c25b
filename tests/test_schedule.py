"""The whole pipeline as a scheduled Prefect deployment on a real Prefect server, on the fixture corpus.

One test, two runs of the same deployment in one repository copy: the first (tiny teacher, fixture corpus) goes
through every DVC stage and registers champions; then the corpus is made invalid and the second run must fail with
the validation message while the registry stays exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import load_project_params, pipeline_environment, registry_settings, write_params
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from polydistill.ops import registry, tracking

DEPLOYMENT = "polydistill-pipeline/nightly"
LANGUAGES = ("en", "sl", "zh")


async def wait_for_deployment(name: str, server: subprocess.Popen, log_path: Path, timeout: float = 120) -> dict:
    """The served deployment once the server knows it (its schedules included)."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()
            try:
                deployment = await client.read_deployment_by_name(name)
                return {"id": deployment.id, "crons": [item.schedule.cron for item in deployment.schedules]}
            except ObjectNotFound:  # not registered yet
                await asyncio.sleep(1)
    raise AssertionError(f"deployment {name} never appeared: {log_path.read_text()}")


def registry_state(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Per language: the champion version and every version number."""
    uri = tracking.tracking_uri(root)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    state = {}
    for lang in LANGUAGES:
        name = registry.student_model_name("polydistill", lang)
        versions = sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        state[lang] = (str(client.get_model_version_by_alias(name, "champion").version), versions)
    return state


def make_corpus_invalid(root: Path) -> None:
    corpus = root / "tests/fixtures/corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    rows[0]["label"] = "neutral"
    corpus.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.mark.slow
def test_scheduled_deployment_runs_the_pipeline_and_a_failed_validation_leaves_the_registry(
        repo_copy: Path, prefect_server: str, mlflow_db_template: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy2(mlflow_db_template, repo_copy / "mlflow.db")
    params = load_project_params(repo_copy)
    params["registry"] = registry_settings() | {"gate": {**registry_settings()["gate"], "min_macro_f1": 0.0,
                                                         "min_retention": 0.0}}
    params["schedule"] = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["schedule"]
    write_params(repo_copy, params)

    log_path = repo_copy / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "serve"], cwd=repo_copy,
                                  env=pipeline_environment(repo_copy), stdout=log, stderr=log, start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):  # read at import
            deployment = asyncio.run(wait_for_deployment(DEPLOYMENT, server, log_path))
            assert deployment["crons"] == [params["schedule"]["cron"]]

            first = run_deployment(DEPLOYMENT, timeout=900)
            assert first.state.is_completed(), f"{first.state.message}\n{log_path.read_text()[-6000:]}"
            report = json.loads((repo_copy / "metrics/registry.json").read_text(encoding="utf-8"))
            champions = {lang: entry["champion"] for lang, entry in report["languages"].items()}
            assert champions == dict.fromkeys(LANGUAGES, 1)
            assert report["router_version"] == 1
            before = registry_state(repo_copy)

            make_corpus_invalid(repo_copy)
            second = run_deployment(DEPLOYMENT, timeout=600)
            assert second.state.is_failed()
            assert "validate" in second.state.message and "neutral" in second.state.message, second.state.message
            assert registry_state(repo_copy) == before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
