"""MLflow on a tracking server backed by PostgreSQL (pgserver, `polydistill tracking start`): registration, the gate
under its lock, the router build, `polydistill status` and serving over HTTP go through it with unchanged code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REGISTRY_LANGUAGES, VENV_BIN, free_port, prepare_registry_workspace, write_params
from mlflow import MlflowClient
from test_router import EXPECTED_LANGS, MIXED, post, served_router

from polydistill.ops import pipeline_run, promotion, serving


@pytest.mark.slow
def test_register_promote_route_and_serve_through_a_postgres_backed_server(
        tmp_path: Path, tracking_url: str, mlflow_db_template: Path, tiny_students: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", tracking_url)
    root = tmp_path / "project"
    params = prepare_registry_workspace(root, mlflow_db_template, tiny_students)
    (root / "mlflow.db").unlink()  # nothing may fall back to a local store
    params["registry"]["tracking_uri"] = tracking_url
    write_params(root, params)
    settings, languages = params["registry"], list(REGISTRY_LANGUAGES)

    pipeline_run.log_pipeline_run(root, params)
    for lang in languages:
        assert promotion.promote(root, settings, lang).promoted
    assert serving.register_router(root, settings, languages) == "1"
    assert serving.load_router(root, settings).predict(MIXED)["lang"].tolist() == EXPECTED_LANGS

    client = MlflowClient(tracking_uri=tracking_url, registry_uri=tracking_url)
    assert client.get_experiment_by_name(settings["experiment"]).artifact_location.startswith("mlflow-artifacts:")
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()

    environment = {**os.environ, "POLYDISTILL_ROOT": str(root)}
    status = subprocess.run([str(VENV_BIN / "polydistill"), "status"], env=environment, capture_output=True,
                            text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    assert all(any(line.split()[:2] == [lang, "1"] for line in status.stdout.splitlines()) for lang in languages)

    with served_router(root, environment, free_port(), "--watch", "0") as (base, _):
        code, body = post(f"{base}/invocations", {"dataframe_records": MIXED.to_dict("records")})
        assert code == 200 and [row["lang"] for row in body["predictions"]] == EXPECTED_LANGS, body
