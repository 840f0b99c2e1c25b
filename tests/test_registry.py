"""MLflow tracking and the registry on a real SQLite store: runs, registration, the gate, promote, force, rollback."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from conftest import REGISTRY_LANGUAGES, load_project_params, write_evaluation, write_params
from mlflow import MlflowClient

from polydistill.ops import registry

GATE = {"min_macro_f1": 0.5, "min_retention": 0.9, "max_f1_drop": 0.01, "require_ci_overlap": True}
CHAMPION_METRICS = {"macro_f1": 0.80, "macro_f1_ci_low": 0.74, "macro_f1_ci_high": 0.86, "retention": 0.95,
                    "test_split_sha256": "abc"}


def client_for(root: Path) -> MlflowClient:
    uri = registry.tracking_uri(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def candidate(**changes: float) -> dict:
    return {**CHAMPION_METRICS, **changes}


@pytest.mark.parametrize(("challenger", "champion", "promote"), [
    (candidate(), None, True),                                            # first version above the minimums
    (candidate(retention=0.85), None, False),                             # first version below min retention
    (candidate(macro_f1=0.45), None, False),                              # first version below min macro-F1
    (candidate(macro_f1=0.795), CHAMPION_METRICS, True),                  # within the tolerance
    (candidate(macro_f1=0.78), CHAMPION_METRICS, False),                  # beyond the tolerance
    (candidate(macro_f1_ci_low=0.60, macro_f1_ci_high=0.73), {**CHAMPION_METRICS, "macro_f1": 0.70}, False),
    (candidate(macro_f1=0.83, macro_f1_ci_low=0.77, macro_f1_ci_high=0.89), CHAMPION_METRICS, True),
])
def test_gate_decision(challenger: dict, champion: dict | None, promote: bool) -> None:
    decision = registry.gate_decision(challenger, champion, GATE)
    assert decision.promote is promote, decision.reasons
    assert any(reason.startswith("FAIL") for reason in decision.reasons) is not promote


def test_gate_reports_a_different_test_split() -> None:
    decision = registry.gate_decision(candidate(test_split_sha256="other"), CHAMPION_METRICS, GATE)
    assert decision.promote and any("different test split" in reason for reason in decision.reasons)


def test_tracking_uri_prefers_environment_then_params(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert registry.tracking_uri(tmp_path, "sqlite:////elsewhere.db") == "sqlite:////elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////from-env.db")
    assert registry.tracking_uri(tmp_path, "sqlite:////elsewhere.db") == "sqlite:////from-env.db"


def test_pipeline_run_is_logged_with_nested_runs_and_students_registered(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    record = registry.log_pipeline_run(root, params)
    client = client_for(root)

    parent = client.get_run(record["run_id"])
    assert parent.data.params["distill.temperature"] == str(params["distill"]["temperature"])
    assert parent.data.params["data.languages"] == '["en", "sl", "zh"]'
    assert parent.data.tags["git_commit"] == "unknown" and parent.data.metrics["en.kd_macro_f1"] == 0.80
    assert parent.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
    children = client.search_runs([parent.info.experiment_id],
                                   f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(run.info.run_name for run in children) == ["student-en", "student-sl", "student-zh", "teacher"]
    zh_run = next(run for run in children if run.info.run_name == "student-zh")
    assert zh_run.data.tags["lang"] == "zh" and zh_run.data.tags["mode"] == params["distill"]["mode"]
    assert zh_run.data.metrics["systems.kd_student.macro_f1"] == 0.80
    assert zh_run.data.metrics["paired.retention.ratio"] == 0.95
    assert zh_run.data.metrics["systems.kd_student.per_class.negative.f1"] == 0.80

    for lang in REGISTRY_LANGUAGES:
        name = registry.student_model_name("polydistill", lang)
        version = client.get_model_version_by_alias(name, "challenger")
        assert str(version.version) == "1" and version.tags["metric.macro_f1"] == "0.8"
        assert version.tags["run_id"] == record["languages"][lang]["run_id"]
        assert registry.promote(root, params["registry"], lang).promoted


def test_champion_loads_offline_and_predicts(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["zh"]
    registry.log_pipeline_run(root, params)
    registry.promote(root, params["registry"], "zh")

    mlflow.set_tracking_uri(registry.tracking_uri(root))
    model = mlflow.pyfunc.load_model("models:/polydistill-student-zh@champion")
    predictions = model.predict(["这个酒店很干净，服务也很好。", "房间太脏了。"])
    assert list(predictions["label"]) and set(predictions["label"]) <= {"negative", "positive"}
    assert ((predictions["score"] >= 0.5) & (predictions["score"] <= 1)).all()


def champion(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_worse_model_refused_then_forced_then_rolled_back(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["en"]
    write_params(root, params)
    settings, name = params["registry"], "polydistill-student-en"
    client = client_for(root)

    registry.log_pipeline_run(root, params)
    assert registry.promote(root, settings, "en").promoted

    write_evaluation(root, "en", 0.70, (0.62, 0.73), 0.93)
    registry.log_pipeline_run(root, params)
    refused = registry.promote(root, settings, "en")
    assert not refused.promoted and refused.champion == "1"
    assert any(reason.startswith("FAIL: macro-F1 0.7000 vs champion 0.8000") for reason in refused.reasons)
    assert any("entirely below" in reason for reason in refused.reasons)
    assert champion(client, name) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["gate"] == "refused"

    forced = registry.promote(root, settings, "en", force=True)
    assert forced.promoted and champion(client, name) == "2"
    assert "forced by the operator despite the gate" in forced.reasons

    rolled = registry.rollback(root, settings, "en")
    assert rolled.champion == "1" and rolled.previous_champion == "2" and champion(client, name) == "1"
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(root, settings, "en")
    assert champion(client, name) == "1"

    write_evaluation(root, "en", 0.84, (0.79, 0.89), 0.97)
    registry.log_pipeline_run(root, params)
    accepted = registry.promote(root, settings, "en")
    assert accepted.promoted and champion(client, name) == "3"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'", order_by=["version_number"])] \
        == ["1", "2", "3"]
    rows = registry.status(root, settings, ["en", "sl"])
    assert rows[0] | {"promoted_at": None} == {"lang": "en", "champion": "3", "challenger": None, "macro_f1": 0.84,
                                               "retention": 0.97, "weights_mb": 0.1, "promoted_at": None}
    assert rows[1]["champion"] is None
