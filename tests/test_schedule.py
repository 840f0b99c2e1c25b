"""The whole pipeline as a scheduled Prefect deployment on a real Prefect server, on the fixture corpus.

One test, in a copy of the session's evaluated pipeline (tiny teacher, fixture corpus: every DVC stage but register
has run) with a local DVC remote: the first run of the deployment runs the register stage into an empty registry,
registers champions and pushes the outputs. Then the champion router answers drifted traffic with the inference log
on, and the monitor flow reports it, logs an MLflow run and starts a run of the deployment (the pipeline is up to
date: it completes without training). A git clone with an empty DVC cache pulls, and its `dvc repro` runs the
register stage only (its summary is not cached, and its registry is the clone's own). Last, the corpus is made
invalid and a run must fail with the validation message while the registry stays exactly as it was.
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
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import (
    BuiltPipeline,
    commit_workspace,
    copy_built,
    load_project_params,
    pipeline_environment,
    registry_settings,
    run_dvc,
    stages_run,
    wait_for_deployment,
    write_params,
)
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from polydistill.ops import inference_log, registry, serving, tracking

DEPLOYMENT = "polydistill-pipeline/nightly"
LANGUAGES = ("en", "sl", "zh")


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


def monitor_drifted_traffic(root: Path, params: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Route en rows and zh rows sent as en through the champion router with the inference log on (text kept), run
    the monitor flow in the copy, and return its JSON report."""
    monkeypatch.setenv(inference_log.LOG_ENV, str(root / params["monitor"]["log"]))
    monkeypatch.setenv(inference_log.TEXT_ENV, "1")
    corpus = pd.read_json(root / "tests/fixtures/corpus.jsonl", lines=True)
    rows = params["monitor"]["min_rows"] + 10
    traffic = pd.concat([corpus[corpus["lang"] == "en"].head(rows),
                         corpus[corpus["lang"] == "zh"].head(rows).assign(lang="en")])
    answers = serving.load_router(root, params["registry"]).predict(traffic[["text", "lang"]])
    assert (answers["status"] == "ok").all()
    assert len(inference_log.read_log(root / params["monitor"]["log"])) == len(traffic)
    monitor = subprocess.run([sys.executable, "-m", "flows.monitor", "run"], cwd=root, env=pipeline_environment(root),
                             capture_output=True, text=True, timeout=600)
    assert monitor.returncode == 0, monitor.stderr[-6000:]
    report = json.loads((root / params["monitor"]["report"]).with_suffix(".json").read_text(encoding="utf-8"))
    assert report["languages"]["en"]["shadow"]["rows"] == min(params["monitor"]["shadow_rows"], len(traffic))
    uri = tracking.tracking_uri(root)
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name(params["registry"]["experiment"]).experiment_id],
        "tags.stage = 'monitor'")
    assert len(runs) == 1 and runs[0].data.metrics["en.flagged"] == 1.0 and runs[0].data.tags["flagged"] == "en"
    return report


def assert_a_clone_pulls_and_reruns_only_register(root: Path) -> None:
    """git clone of the committed copy, `dvc pull` from its remote, then `dvc repro`: only register runs."""
    commit_workspace(root)
    clone = root.parent / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    pulled = run_dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout[-3000:] + pulled.stderr[-3000:]
    stale = json.loads(run_dvc(clone, "status", "--json").stdout)
    assert set(stale) == {"register"}, stale  # metrics/registry.json: cache: false and not in git
    repro = run_dvc(clone, "repro")
    assert repro.returncode == 0, repro.stdout[-5000:] + repro.stderr[-5000:]
    assert stages_run(repro.stdout) == ["register"], repro.stdout[-3000:]
    assert "up to date" in run_dvc(clone, "status").stdout


async def wait_for_flow_run(flow_run_id: str, timeout: float = 600) -> Any:
    """The flow run once it reached a final state."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if run.state.is_final():
                return run
            await asyncio.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s")


@pytest.mark.slow
def test_scheduled_deployment_runs_the_pipeline_and_a_failed_validation_leaves_the_registry(
        evaluated_pipeline: BuiltPipeline, prefect_server: str, mlflow_db_template: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo_copy = copy_built(evaluated_pipeline, tmp_path / "repo")
    shutil.copy2(mlflow_db_template, repo_copy / "mlflow.db")
    params = load_project_params(repo_copy)
    params["registry"] = registry_settings() | {"gate": {**registry_settings()["gate"], "min_macro_f1": 0.0,
                                                         "min_retention": 0.0}}
    params["schedule"] = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["schedule"]
    write_params(repo_copy, params)

    remote = repo_copy.parent / "dvc-remote"
    assert run_dvc(repo_copy, "remote", "add", "--default", "shared", str(remote)).returncode == 0

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

            monitored = monitor_drifted_traffic(repo_copy, params, monkeypatch)
            assert monitored["flagged_languages"] == ["en"], monitored["languages"]["en"]["reasons"]
            triggered = asyncio.run(wait_for_flow_run(monitored["triggered_run"]))
            assert triggered.deployment_id == deployment["id"] and "monitor-trigger" in triggered.tags
            assert triggered.state.is_completed(), triggered.state.message
            assert registry_state(repo_copy) == before

            assert any(path.is_file() for path in remote.rglob("*")), "the pipeline flow pushed nothing"
            assert_a_clone_pulls_and_reruns_only_register(repo_copy)

            make_corpus_invalid(repo_copy)
            second = run_deployment(DEPLOYMENT, timeout=600)
            assert second.state.is_failed()
            assert "validate" in second.state.message and "neutral" in second.state.message, second.state.message
            assert registry_state(repo_copy) == before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
