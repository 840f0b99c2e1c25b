"""The register stage's MLflow record of one pipeline run: a parent run with the params, reports and lineage, a
nested teacher run with its training history, and one nested run per language whose KD student is registered
(polydistill.ops.registry.register_student) with its test metrics and the validation figures the gate needs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polydistill.ops.gate import ValidationRows
from polydistill.ops.promotion import TEACHER_VALIDATION_TAG, VALIDATION_HASH_TAG
from polydistill.ops.registry import register_student
from polydistill.ops.tracking import connect, experiment_id, lineage, numeric_metrics, param_values, read_json

PARENT_ARTIFACTS = ("params.yaml", "dvc.lock", "metrics/balance.json", "metrics/prepare.json", "metrics/transfer.json",
                    "metrics/soft_labels.json", "reports/evaluation.md", "data/soft_labels/fingerprint.json",
                    "data/validation/report.json", "plots/balance/balance_shares.png",
                    "plots/balance/balance_shares.csv")


def student_summary(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The KD student's headline test numbers from metrics/evaluate/<lang>.json (reported, never gated on)."""
    kd = evaluation["systems"]["kd_student"]
    efficiency = evaluation.get("efficiency", {}).get("kd_student", {})
    summary = {
        "macro_f1": kd["macro_f1"],
        "macro_f1_ci_low": kd["macro_f1_ci_low"],
        "macro_f1_ci_high": kd["macro_f1_ci_high"],
        "accuracy": kd.get("accuracy"),
        "retention": evaluation["paired"]["retention"]["ratio"],
        "kd_gain": evaluation["paired"].get("kd_gain", {}).get("difference"),
        "test_rows": evaluation.get("test_rows"),
        "weights_mb": efficiency.get("weights_mb"),
        "total_params": efficiency.get("total_params"),
        "latency_ms_median": efficiency.get("latency_ms_median"),
        "throughput_texts_per_s": efficiency.get("throughput_texts_per_s"),
    }
    return {key: float(value) for key, value in summary.items() if value is not None}


def validation_tags(root: Path, settings: Mapping[str, Any], lang: str) -> dict[str, str]:
    """The teacher's validation macro-F1 (metrics/soft_labels.json) and the hash of the rows it was measured on."""
    report_path = root / "metrics/soft_labels.json"
    teacher = read_json(report_path).get("validation_macro_f1", {}).get(lang, {}) if report_path.exists() else {}
    if "ensemble" not in teacher:
        return {}
    rows = ValidationRows.load(root / settings["gate"]["validation_split"], lang)
    return {TEACHER_VALIDATION_TAG: str(teacher["ensemble"]), VALIDATION_HASH_TAG: rows.sha256}


def log_language_run(root: Path, params: Mapping[str, Any], lang: str, parent_lineage: Mapping[str, str],
                     settings: Mapping[str, Any]) -> dict[str, Any]:
    """Inside an active nested run: a language's metrics, plots and KD student, registered as a challenger."""
    import mlflow

    evaluation = read_json(root / f"metrics/evaluate/{lang}.json")
    mlflow.set_tags({"lang": lang, "mode": params["distill"]["mode"], "stage": "student", **parent_lineage})
    metrics = numeric_metrics(evaluation)
    distill_path = root / f"metrics/distill/{lang}.json"
    if distill_path.exists():
        distilled = read_json(distill_path)
        metrics |= numeric_metrics(distilled, "distill.")
        mlflow.log_params({f"distill.{name}": value for name, value in distilled.get("kd_settings", {}).items()})
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(root / f"metrics/evaluate/{lang}.json"), "metrics")
    for pattern in (f"confusion_{lang}.*", "macro_f1.*"):
        for path in sorted((root / "plots/evaluate").glob(pattern)):
            mlflow.log_artifact(str(path), "plots")
    summary = student_summary(evaluation)
    tags = {**{f"metric.{key}": str(value) for key, value in summary.items()}, **parent_lineage,
            **validation_tags(root, settings, lang)}
    record = register_student(root / f"models/students/{lang}/kd", lang, tags, settings["prefix"])
    return {**record, "metrics": summary}


def log_teacher_run(root: Path, parent_lineage: Mapping[str, str]) -> None:
    """Inside an active nested run: the teacher's numbers, its training history as stepped metrics."""
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tags({"stage": "teacher", **parent_lineage})
    path = root / "metrics/teacher.json"
    if not path.exists():
        return
    teacher = read_json(path)
    history = teacher.pop("history", [])
    mlflow.log_metrics(numeric_metrics(teacher))
    now = int(time.time() * 1000)
    stepped = [Metric(f"history.{key}", value, now, int(entry["step"]))
               for entry in history for key, value in numeric_metrics(entry).items() if key != "step"]
    for start in range(0, len(stepped), 500):
        mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=stepped[start:start + 500])
    mlflow.log_artifact(str(path), "metrics")


def log_parent_context(root: Path, params: Mapping[str, Any], languages: list[str]) -> None:
    """The parent run's params, sampling, transfer and soft-label reports, per-language headline numbers and lineage
    artifacts."""
    import mlflow

    mlflow.log_params(param_values(params))
    for report in ("balance", "transfer", "soft_labels"):
        report_path = root / f"metrics/{report}.json"
        if report_path.exists():
            mlflow.log_metrics(numeric_metrics(read_json(report_path), f"{report}."))
    for lang in languages:
        summary = read_json(root / f"metrics/evaluate/{lang}.json").get("summary", {})
        mlflow.log_metrics(numeric_metrics(summary, f"{lang}."))
    for name in PARENT_ARTIFACTS:
        if (root / name).exists():
            mlflow.log_artifact(str(root / name), str(Path("pipeline") / Path(name).parent))


def log_pipeline_run(root: Path, params: Mapping[str, Any], run_name: str | None = None) -> dict[str, Any]:
    """One parent run for the workspace's pipeline results, nested teacher and per-language runs.

    Registers each language's KD student as a new `challenger` version (or reuses the version that already holds
    the same weights and lineage). Returns the parent run id and, per language, its run id, model name, version,
    whether it was reused, and headline metrics.
    """
    import mlflow

    root = Path(root).resolve()
    settings = params["registry"]
    languages = list(params["data"]["languages"])
    client = connect(root, settings)
    experiment = experiment_id(client, settings["experiment"])
    tags = lineage(root)
    record: dict[str, Any] = {"languages": {}}
    with mlflow.start_run(experiment_id=experiment, run_name=run_name, tags={"stage": "pipeline", **tags}) as parent:
        record["run_id"] = parent.info.run_id
        log_parent_context(root, params, languages)
        with mlflow.start_run(experiment_id=experiment, run_name="teacher", nested=True):
            log_teacher_run(root, tags)
        for lang in languages:
            with mlflow.start_run(experiment_id=experiment, run_name=f"student-{lang}", nested=True):
                record["languages"][lang] = log_language_run(root, params, lang,
                                                             {**tags, "parent_run_id": parent.info.run_id}, settings)
    return record
