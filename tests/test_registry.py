"""MLflow tracking and the registry on a real SQLite store: runs, idempotent registration, the validation gate,
promote, force, rollback, redaction."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import biased_copy, least_predicted_label, load_project_params, worse_copy, write_evaluation, write_params
from mlflow import MlflowClient

from polydistill.ops import gate, pipeline_run, promotion, registry, tracking

GATE = gate.GateSettings(validation_split="unused", min_macro_f1=0.5, min_retention=0.9, max_f1_drop=0.01,
                         refuse_significantly_worse=True, bootstrap_samples=500, confidence=0.95, seed=13)
CODES = np.array([0, 1] * 20)


def one_hot(predictions: np.ndarray) -> np.ndarray:
    return np.eye(2)[predictions]


def scored(version: str, wrong_rows: int) -> gate.ScoredVersion:
    """Probabilities that are right on all rows but the first `wrong_rows`."""
    predictions = CODES.copy()
    predictions[:wrong_rows] = 1 - predictions[:wrong_rows]
    return gate.ScoredVersion(version, one_hot(predictions))


def client_for(root: Path) -> MlflowClient:
    uri = tracking.tracking_uri(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.parametrize(("challenger_wrong", "teacher", "best_wrong", "promote"), [
    (2, 0.95, None, True),     # first version above the minimums
    (2, 1.2, None, False),     # first version below min retention (0.95 / 1.2)
    (25, 0.5, None, False),    # first version below min macro-F1
    (2, None, None, False),    # no teacher score for these rows: retention cannot be checked
    (2, 0.95, 2, True),        # as good as the best champion
    (3, 0.95, 2, False),       # 0.025 below the best champion: beyond the tolerance
    (0, 0.95, 2, True),        # better than the best champion
])
def test_gate_decision(challenger_wrong: int, teacher: float | None, best_wrong: int | None, promote: bool) -> None:
    best = scored("1", best_wrong) if best_wrong is not None else None
    decision = gate.gate_decision(CODES, scored("2", challenger_wrong), teacher, best, GATE)
    assert decision.promote is promote, decision.reasons
    assert any(reason.startswith("FAIL") for reason in decision.reasons) is not promote


def test_gate_refuses_a_challenger_significantly_worse_even_within_the_tolerance() -> None:
    tolerant = gate.GateSettings(**{**GATE.__dict__, "max_f1_drop": 0.5})
    decision = gate.gate_decision(CODES, scored("2", 12), 0.6, scored("1", 0), tolerant)
    assert not decision.promote and any("entirely below 0" in reason for reason in decision.reasons)


def test_validation_rows_are_hashed_by_id_text_and_label(tmp_path: Path) -> None:
    from conftest import write_validation

    write_validation(tmp_path, {"en": (["a", "b"], ["negative", "positive"])})
    first = gate.ValidationRows.load(tmp_path / "data/prepared/validation.parquet", "en")
    write_validation(tmp_path, {"en": (["a", "b"], ["negative", "negative"])})
    relabelled = gate.ValidationRows.load(tmp_path / "data/prepared/validation.parquet", "en")
    assert first.sha256 != relabelled.sha256 and first.texts == relabelled.texts
    with pytest.raises(ValueError, match="no rows for 'sl'"):
        gate.ValidationRows.load(tmp_path / "data/prepared/validation.parquet", "sl")


def test_tracking_uri_prefers_environment_then_params(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.tracking_uri(tmp_path, "sqlite:////elsewhere.db") == "sqlite:////elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////from-env.db")
    assert tracking.tracking_uri(tmp_path, "sqlite:////elsewhere.db") == "sqlite:////from-env.db"


@pytest.mark.parametrize(("uri", "shown"), [
    ("postgresql://mlflow:s3cret@db.internal:5432/mlflow", "postgresql://mlflow:***@db.internal:5432/mlflow"),
    ("https://token@mlflow.example.com/", "https://***@mlflow.example.com/"),
    ("https://mlflow.example.com/?api_key=abc&x=1", "https://mlflow.example.com/?api_key=***&x=1"),
    ("sqlite:////work/mlflow.db", "sqlite:////work/mlflow.db"),
])
def test_credentials_are_redacted(uri: str, shown: str) -> None:
    assert tracking.redact_uri(uri) == shown
    logged = tracking.param_values({"registry": {"tracking_uri": uri}})["registry.tracking_uri"]
    assert "s3cret" not in logged and "abc" not in logged and "token@" not in logged


def test_pipeline_run_is_logged_with_nested_runs_and_students_registered(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    record = pipeline_run.log_pipeline_run(root, params)
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

    for lang in ("en", "sl", "zh"):
        name = registry.student_model_name("polydistill", lang)
        version = client.get_model_version_by_alias(name, "challenger")
        assert str(version.version) == "1" and version.tags["metric.macro_f1"] == "0.8"
        assert version.tags["run_id"] == record["languages"][lang]["run_id"]
        assert version.tags["teacher_validation_macro_f1"] == "1.0" and len(version.tags["model_sha256"]) == 64
        result = promotion.promote(root, params["registry"], lang)
        assert result.promoted and "pass: validation macro-F1 1.0000 vs minimum 0.5" in result.reasons


def test_rerun_after_a_failure_reuses_the_versions_and_moves_no_alias(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    client = client_for(root)
    first = pipeline_run.log_pipeline_run(root, params)
    assert promotion.promote(root, params["registry"], "en").promoted  # then the stage "fails": sl, zh not gated
    second = pipeline_run.log_pipeline_run(root, params)
    assert {lang: entry["version"] for lang, entry in second["languages"].items()} == {"en": "1", "sl": "1", "zh": "1"}
    assert all(entry["reused"] for entry in second["languages"].values()) and second["run_id"] != first["run_id"]
    for lang in ("en", "sl", "zh"):
        assert len(client.search_model_versions(f"name = 'polydistill-student-{lang}'")) == 1
    assert registry.alias_version(client, "polydistill-student-en", "champion") == "1"
    assert registry.alias_version(client, "polydistill-student-en", "challenger") is None
    assert registry.alias_version(client, "polydistill-student-sl", "challenger") == "1"


def test_champion_loads_offline_and_predicts(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["zh"]
    pipeline_run.log_pipeline_run(root, params)
    promotion.promote(root, params["registry"], "zh")

    mlflow.set_tracking_uri(tracking.tracking_uri(root))
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
    original = shutil.copytree(root / "models/students/en/kd", root / "original-en")

    assert pipeline_run.log_pipeline_run(root, params)["languages"]["en"]["version"] == "1"
    assert promotion.promote(root, settings, "en").promoted

    worse_copy(original, root / "models/students/en/kd", "en")
    pipeline_run.log_pipeline_run(root, params)
    refused = promotion.promote(root, settings, "en")
    assert not refused.promoted and refused.champion == "1"
    assert any(reason.startswith("FAIL: validation macro-F1") and "best champion so far (version 1) 1.0000" in reason
               for reason in refused.reasons), refused.reasons
    assert champion(client, name) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["gate"] == "refused"

    forced = promotion.promote(root, settings, "en", force=True)
    assert forced.promoted and champion(client, name) == "2"
    assert "forced by the operator despite the gate" in forced.reasons

    rolled = promotion.rollback(root, settings, "en")
    assert rolled.champion == "1" and rolled.previous_champion == "2" and champion(client, name) == "1"
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        promotion.rollback(root, settings, "en")
    assert champion(client, name) == "1"

    shutil.copytree(original, root / "models/students/en/kd", dirs_exist_ok=True)  # v1's weights, new data:
    (root / "data/prepared/extra.txt").write_text("changes the data hash", encoding="utf-8")
    write_evaluation(root, "en", 0.84, (0.79, 0.89), 0.97)
    pipeline_run.log_pipeline_run(root, params)
    accepted = promotion.promote(root, settings, "en")
    assert accepted.promoted and champion(client, name) == "3", accepted.reasons
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'", order_by=["version_number"])] \
        == ["1", "2", "3"]
    rows = promotion.status(root, settings, ["en", "sl"])
    assert rows[0] | {"promoted_at": None} == {"lang": "en", "champion": "3", "challenger": None, "macro_f1": 0.84,
                                               "retention": 0.97, "weights_mb": 0.1, "promoted_at": None}
    assert rows[1]["champion"] is None


def test_the_gate_compares_with_the_best_champion_in_history_not_only_the_current(
        registry_project: Path, tiny_students: dict[str, Path]) -> None:
    """A forced, worse champion does not lower the bar: the next challenger is held to the best one so far."""
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["en"]
    settings, client = params["registry"], client_for(root)
    settings["gate"].update(min_macro_f1=0.0, min_retention=0.0)  # only the comparison with champions decides
    student = root / "models/students/en/kd"
    original = shutil.copytree(student, root / "original-en")

    pipeline_run.log_pipeline_run(root, params)
    assert promotion.promote(root, settings, "en").promoted                   # v1: right on every row
    label = least_predicted_label(original, "en")
    biased_copy(original, student, label)
    pipeline_run.log_pipeline_run(root, params)
    assert promotion.promote(root, settings, "en", force=True).promoted       # v2: worse, forced
    biased_copy(tiny_students["sl"], student, label)                         # v3: other weights, v2's answers
    pipeline_run.log_pipeline_run(root, params)
    third = promotion.promote(root, settings, "en")
    assert not third.promoted and champion(client, "polydistill-student-en") == "2"
    failed = [reason for reason in third.reasons if reason.startswith("FAIL")]
    assert failed and all("best champion so far (version 1)" in reason or "interval" in reason
                          for reason in failed), third.reasons


def test_history_out_of_step_is_refused_by_rollback_and_repaired_by_promote(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["en"]
    settings, client, name = params["registry"], client_for(root), "polydistill-student-en"
    pipeline_run.log_pipeline_run(root, params)
    promotion.promote(root, settings, "en")
    client.set_registered_model_tag(name, registry.HISTORY_TAG, "[]")  # a crash between alias and history writes
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        promotion.rollback(root, settings, "en")
    client.set_registered_model_tag(name, registry.HISTORY_TAG, '["7", "9"]')  # an alias moved by hand
    with pytest.raises(registry.RegistryError, match="does not end at the champion version 1"):
        promotion.rollback(root, settings, "en")
    assert champion(client, name) == "1"
    assert registry.history_in_step(client, name) == ["7", "9", "1"]


def test_a_version_without_metric_tags_is_refused_then_forced(registry_project: Path) -> None:
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["en"]
    settings, client, name = params["registry"], client_for(root), "polydistill-student-en"
    pipeline_run.log_pipeline_run(root, params)
    for key in list(client.get_model_version(name, "1").tags):
        if key.startswith(("metric.", "teacher_validation")):
            client.delete_model_version_tag(name, "1", key)
    refused = promotion.promote(root, settings, "en")
    assert not refused.promoted and any("retention cannot be checked" in reason for reason in refused.reasons)
    assert promotion.promote(root, settings, "en", force=True).promoted
    assert promotion.status(root, settings, ["en"])[0]["macro_f1"] is None
