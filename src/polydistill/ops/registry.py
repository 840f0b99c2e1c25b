"""MLflow tracking and the per-language model registry: pipeline runs, student versions, gated promotion, rollback.

Every MLflow call of polydistill lives here (mlflow is imported inside the functions: it takes over a second).
Tracking and registry share one URI: MLFLOW_TRACKING_URI if set, else `registry.tracking_uri` from params, else
`sqlite:///<project root>/mlflow.db`; with a SQLite store the artifacts go to `mlartifacts/` beside the database.
Never a file store: every run goes to the named experiment, never to the default one (whose artifacts would land
in ./mlruns).

Registered models: `<prefix>-student-<lang>` (one Hugging Face student per language, transformers flavor) and
`<prefix>-router` (see polydistill.ops.router). Aliases: `challenger` for the newest unpromoted version, `champion` for
the one that serves. The registered model tag `champion_history` is the stack of champion versions that `rollback`
pops; versions are never deleted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from polydistill.data.archives import sha256_of

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
STUDENT_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors")
ROUTER_REQUIREMENTS = (*STUDENT_REQUIREMENTS, "pandas", "lingua-language-detector")
ARTIFACT_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
GATE_METRICS = ("macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "retention")


class RegistryError(RuntimeError):
    """A registry operation that cannot be carried out (no such version, nothing to roll back to...)."""


@dataclass(frozen=True)
class GateDecision:
    """Whether a version may become champion, and every reason checked on the way."""

    promote: bool
    reasons: list[str]


@dataclass
class PromotionResult:
    """What promote or rollback did to one language's champion."""

    lang: str
    version: str
    previous_champion: str | None
    champion: str | None
    promoted: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- connection


def tracking_uri(root: Path, configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else the project's SQLite database."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def student_model_name(prefix: str, lang: str) -> str:
    return f"{prefix}-student-{lang}"


def router_model_name(prefix: str) -> str:
    return f"{prefix}-router"


def connect(root: Path, settings: Mapping[str, Any]) -> Any:
    """Point MLflow (tracking and registry) at the project's store and return an MlflowClient."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(root, settings.get("tracking_uri"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_root(uri: str) -> str | None:
    """For a SQLite store, the file URI of `mlartifacts` beside the database (so a DVC experiment in a temp copy,
    pointed at the workspace's database by MLFLOW_TRACKING_URI, keeps its artifacts there too); else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def experiment_id(client: Any, name: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite database) when it does not exist."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri))


# ---------------------------------------------------------------------------------------------------- flattening


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_name(key: str) -> str:
    """A key MLflow accepts as a metric name (letters, digits, _ - . / and spaces)."""
    return "".join(char if char.isalnum() or char in "_-./ " else "_" for char in key)


def numeric_metrics(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested mapping under stable dotted names (booleans and lists left out)."""
    return {metric_name(key): float(value) for key, value in flatten(mapping, prefix).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}


def param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """All of params.yaml flattened to strings (lists as JSON) for mlflow.log_params."""
    return {key: json.dumps(value) if isinstance(value, list | dict) else str(value)
            for key, value in flatten(params).items()}


# ---------------------------------------------------------------------------------------------------- lineage


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def git_commit(root: Path) -> str:
    """HEAD's commit ('unknown' outside a repository or before the first commit), '-dirty' with local changes."""
    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=root, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def folder_sha256(folder: Path) -> str:
    """One sha256 over every file of a folder (relative names and contents), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def lineage(root: Path) -> dict[str, str]:
    """Commit, dvc.lock hash, prepared-data hash, teacher fingerprint and test split hash of the workspace."""
    fingerprint_path = root / "data/soft_labels/fingerprint.json"
    fingerprint = read_json(fingerprint_path) if fingerprint_path.exists() else {}
    prepared = root / "data/prepared"
    return {
        "git_commit": git_commit(root),
        "dvc_lock_sha256": sha256_of(root / "dvc.lock") if (root / "dvc.lock").exists() else "none",
        "data_sha256": folder_sha256(prepared) if prepared.exists() else "none",
        "teacher_fingerprint": fingerprint.get("teacher", {}).get("id", "none"),
        "test_split_sha256": fingerprint.get("rows", {}).get("test", {}).get("ids_sha256", "none"),
    }


def student_summary(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The KD student's headline numbers from metrics/evaluate/<lang>.json (the gate's inputs among them)."""
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
    }
    return {key: float(value) for key, value in summary.items() if value is not None}


# ---------------------------------------------------------------------------------------------------- tracking


@contextmanager
def quiet_model_logging() -> Iterator[None]:
    """Silence progress bars (weights, artifact copies) and MLflow's failed Hub look-ups while logging offline."""
    from transformers.utils import logging as transformers_logging

    flavor_log = logging.getLogger("mlflow.transformers")
    level, bars = flavor_log.level, os.environ.get(ARTIFACT_BARS)
    transformers_logging.disable_progress_bar()
    flavor_log.setLevel(logging.ERROR)
    os.environ[ARTIFACT_BARS] = "false"
    try:
        yield
    finally:
        flavor_log.setLevel(level)
        transformers_logging.enable_progress_bar()
        if bars is None:
            os.environ.pop(ARTIFACT_BARS)
        else:
            os.environ[ARTIFACT_BARS] = bars


def pinned_requirements(packages: tuple[str, ...]) -> list[str]:
    """name==installed version for each package (explicit, so MLflow does not guess or add torchvision)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in packages]


def student_signature() -> Any:
    """A student's signature: a column of texts in, label and score out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]))


def router_signature() -> Any:
    """The router's signature: text and an optional lang in; lang, label, score and student version out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text"), ColSpec("string", "lang", required=False)]),
        outputs=Schema([ColSpec("string", "lang"), ColSpec("string", "label"), ColSpec("double", "score"),
                        ColSpec("string", "student_version")]))


def log_language_run(root: Path, params: Mapping[str, Any], lang: str, parent_lineage: Mapping[str, str],
                     settings: Mapping[str, Any]) -> dict[str, Any]:
    """Inside an active nested run: a language's metrics, plots and KD student, registered as a new challenger."""
    import mlflow

    evaluation = read_json(root / f"metrics/evaluate/{lang}.json")
    mode = params["distill"]["mode"]
    mlflow.set_tags({"lang": lang, "mode": mode, "stage": "student", **parent_lineage})
    metrics = numeric_metrics(evaluation)
    distill_path = root / f"metrics/distill/{lang}.json"
    if distill_path.exists():
        metrics |= numeric_metrics(read_json(distill_path), "distill.")
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(root / f"metrics/evaluate/{lang}.json"), "metrics")
    for path in sorted((root / "plots/evaluate").glob(f"confusion_{lang}.*")):
        mlflow.log_artifact(str(path), "plots")
    for path in sorted((root / "plots/evaluate").glob("macro_f1.*")):
        mlflow.log_artifact(str(path), "plots")
    return register_student(root / f"models/students/{lang}/kd", lang, student_summary(evaluation),
                            parent_lineage, settings)


def register_student(folder: Path, lang: str, summary: Mapping[str, float], lineage_tags: Mapping[str, str],
                     settings: Mapping[str, Any]) -> dict[str, Any]:
    """Log a Hugging Face student folder (transformers flavor) in the active run; new version = challenger."""
    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name = student_model_name(settings["prefix"], lang)
    with quiet_model_logging():
        components = {"model": AutoModelForSequenceClassification.from_pretrained(folder),
                      "tokenizer": AutoTokenizer.from_pretrained(folder)}
        info = mlflow.transformers.log_model(
            components, name="student", task="text-classification", registered_model_name=name,
            pip_requirements=pinned_requirements(STUDENT_REQUIREMENTS), signature=student_signature(),
            input_example=["an example sentence"], await_registration_for=60)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    tags = {**{f"metric.{key}": str(value) for key, value in summary.items()}, **lineage_tags,
            "run_id": run_id, "lang": lang, "source": str(folder)}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    log.info("registered %s version %s (challenger)", name, version)
    return {"run_id": run_id, "model": name, "version": version, "metrics": dict(summary)}


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
    for name in ("params.yaml", "dvc.lock", "metrics/balance.json", "metrics/prepare.json", "metrics/transfer.json",
                 "metrics/soft_labels.json", "reports/evaluation.md",
                 "data/soft_labels/fingerprint.json", "data/validation/report.json",
                 "plots/balance/balance_shares.png", "plots/balance/balance_shares.csv"):
        if (root / name).exists():
            mlflow.log_artifact(str(root / name), str(Path("pipeline") / Path(name).parent))


def log_pipeline_run(root: Path, params: Mapping[str, Any], run_name: str | None = None) -> dict[str, Any]:
    """One parent run for the workspace's pipeline results, nested teacher and per-language runs.

    Registers each language's KD student as a new `challenger` version. Returns the parent run id and, per
    language, its run id, model name, version and headline metrics.
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


# ---------------------------------------------------------------------------------------------------- promotion


def gate_decision(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
                  gate: Mapping[str, Any]) -> GateDecision:
    """Apply the promotion gate: absolute minimums, then (with a champion) the F1 tolerance and the CI rule."""
    reasons: list[str] = []
    passed = True

    def check(ok: bool, message: str) -> None:
        nonlocal passed
        passed = passed and ok
        reasons.append(("pass: " if ok else "FAIL: ") + message)

    f1, retention = challenger["macro_f1"], challenger["retention"]
    check(f1 >= gate["min_macro_f1"], f"macro-F1 {f1:.4f} vs minimum {gate['min_macro_f1']}")
    check(retention >= gate["min_retention"], f"retention {retention:.4f} vs minimum {gate['min_retention']}")
    if champion is None:
        reasons.append("no champion yet: absolute minimums only")
        return GateDecision(passed, reasons)
    drop = champion["macro_f1"] - f1
    check(drop <= gate["max_f1_drop"],
          f"macro-F1 {f1:.4f} vs champion {champion['macro_f1']:.4f}: "
          f"drop {drop:+.4f}, tolerance {gate['max_f1_drop']}")
    if gate.get("require_ci_overlap", True):
        below = challenger["macro_f1_ci_high"] < champion["macro_f1_ci_low"]
        check(not below, f"CI [{challenger['macro_f1_ci_low']:.4f}, {challenger['macro_f1_ci_high']:.4f}] "
                         f"{'entirely below' if below else 'not below'} champion CI "
                         f"[{champion['macro_f1_ci_low']:.4f}, {champion['macro_f1_ci_high']:.4f}]")
    if challenger.get("test_split_sha256") != champion.get("test_split_sha256"):
        reasons.append("note: champion was scored on a different test split")
    return GateDecision(passed, reasons)


def version_metrics(version: Any) -> dict[str, Any]:
    """A model version's gate inputs back from its tags."""
    metrics: dict[str, Any] = {key.removeprefix("metric."): float(value)
                               for key, value in version.tags.items() if key.startswith("metric.")}
    missing = [name for name in GATE_METRICS if name not in metrics]
    if missing:
        raise RegistryError(f"version {version.version} of {version.name} lacks metric tags {missing}")
    metrics["test_split_sha256"] = version.tags.get("test_split_sha256")
    return metrics


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    aliases = client.get_registered_model(name).aliases
    return str(aliases[alias]) if alias in aliases else None


def champion_history(client: Any, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def set_champion(client: Any, name: str, version: str, history: list[str]) -> None:
    """Move the champion alias and record the history stack (alias first: there is always a champion)."""
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def promote(root: Path, settings: Mapping[str, Any], lang: str, version: str | int | None = None,
            force: bool = False) -> PromotionResult:
    """Make a version (default: the challenger) champion if it passes the gate, or regardless with force."""
    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    version = str(version) if version is not None else alias_version(client, name, CHALLENGER)
    if version is None:
        raise RegistryError(f"{name} has no challenger; name a version")
    candidate = client.get_model_version(name, version)
    champion = alias_version(client, name, CHAMPION)
    if champion == version:
        return PromotionResult(lang, version, champion, champion, False, [f"version {version} is already champion"])
    champion_metrics = version_metrics(client.get_model_version(name, champion)) if champion else None
    decision = gate_decision(version_metrics(candidate), champion_metrics, settings["gate"])
    promoted = decision.promote or force
    reasons = decision.reasons + (["forced by the operator despite the gate"] if force and not decision.promote else [])
    client.set_model_version_tag(name, version, "gate", "passed" if decision.promote else "refused")
    client.set_model_version_tag(name, version, "gate_reasons", "; ".join(reasons))
    if promoted:
        set_champion(client, name, version, [*champion_history(client, name), version])
        client.set_model_version_tag(name, version, "promoted_at", now_iso())
        if alias_version(client, name, CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    result = PromotionResult(lang, version, champion, version if promoted else champion, promoted, reasons)
    log.info("%s v%s %s: %s", name, version, "promoted" if promoted else "stays challenger", "; ".join(reasons))
    return result


def rollback(root: Path, settings: Mapping[str, Any], lang: str) -> PromotionResult:
    """Make the previous champion champion again; refuses when there is none (a champion always remains)."""
    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    history = champion_history(client, name)
    current = alias_version(client, name, CHAMPION)
    if current is None or len(history) < 2:
        raise RegistryError(f"{name} has no previous champion to roll back to (history {history})")
    previous = history[-2]
    set_champion(client, name, previous, history[:-1])
    client.set_model_version_tag(name, current, "rolled_back_at", now_iso())
    client.set_model_version_tag(name, previous, "promoted_at", now_iso())
    reasons = [f"rolled back from version {current} to version {previous}"]
    log.info("%s: %s", name, reasons[0])
    return PromotionResult(lang, previous, current, previous, True, reasons)


def status(root: Path, settings: Mapping[str, Any], languages: list[str]) -> list[dict[str, Any]]:
    """One row per language: champion and challenger versions, the champion's macro-F1, retention, size, when."""
    from mlflow.exceptions import MlflowException

    client = connect(root, settings)
    rows = []
    for lang in languages:
        name = student_model_name(settings["prefix"], lang)
        row: dict[str, Any] = {"lang": lang, "champion": None, "challenger": None, "macro_f1": None,
                               "retention": None, "weights_mb": None, "promoted_at": None}
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            rows.append(row)
            continue
        row["champion"] = str(model.aliases[CHAMPION]) if CHAMPION in model.aliases else None
        row["challenger"] = str(model.aliases[CHALLENGER]) if CHALLENGER in model.aliases else None
        if row["champion"]:
            tags = client.get_model_version(name, row["champion"]).tags
            for key in ("macro_f1", "retention", "weights_mb"):
                row[key] = float(tags[f"metric.{key}"]) if f"metric.{key}" in tags else None
            row["promoted_at"] = tags.get("promoted_at")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- router


def register_router(root: Path, settings: Mapping[str, Any], languages: list[str]) -> str | None:
    """Bundle every language's champion into a new `<prefix>-router` version and make it champion.

    Returns the router version (the current one when it already bundles these champions), or None (with a log
    line) when a language has no champion yet.
    """
    import mlflow
    import pandas as pd

    from polydistill.ops import router

    client = connect(root, settings)
    versions = {lang: alias_version_or_none(client, student_model_name(settings["prefix"], lang), CHAMPION)
                for lang in languages}
    if None in versions.values():
        log.warning("router not built: no champion for %s", [lang for lang, v in versions.items() if v is None])
        return None
    name = router_model_name(settings["prefix"])
    current = alias_version_or_none(client, name, CHAMPION)
    if current and bundled_versions(client, name, current) == versions:
        log.info("router %s version %s already bundles the champions %s", name, current, versions)
        return current
    experiment = experiment_id(client, settings["experiment"])
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = {lang: mlflow.artifacts.download_artifacts(
            f"models:/{student_model_name(settings['prefix'], lang)}/{version}", dst_path=f"{scratch}/{lang}")
            for lang, version in versions.items()}
        config = {"languages": languages, "student_versions": versions, **settings.get("router", {})}
        example = pd.DataFrame({"text": [router.EXAMPLE_TEXTS.get(lang, "example") for lang in languages]})
        with mlflow.start_run(experiment_id=experiment, run_name="router", tags={"stage": "router"}), \
                quiet_model_logging():
            info = mlflow.pyfunc.log_model(
                name="router", python_model=router.__file__, artifacts=artifacts, model_config=config,
                signature=router_signature(), input_example=example,
                pip_requirements=pinned_requirements(ROUTER_REQUIREMENTS), registered_model_name=name,
                await_registration_for=60)
    version = str(info.registered_model_version)
    for lang, student_version in versions.items():
        client.set_model_version_tag(name, version, f"student.{lang}", student_version)
    set_champion(client, name, version, [*champion_history_or_empty(client, name), version])
    log.info("router %s version %s bundles %s", name, version, versions)
    return version


def bundled_versions(client: Any, name: str, version: str) -> dict[str, str]:
    """The student versions a router version bundles (from its student.<lang> tags)."""
    tags = client.get_model_version(name, version).tags
    return {key.removeprefix("student."): value for key, value in tags.items() if key.startswith("student.")}


def alias_version_or_none(client: Any, name: str, alias: str) -> str | None:
    """Like alias_version, but None when the model is not registered at all."""
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(client, name, alias)
    except MlflowException:
        return None


def champion_history_or_empty(client: Any, name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        return champion_history(client, name)
    except MlflowException:
        return []


def load_router(root: Path, settings: Mapping[str, Any]) -> Any:
    """The champion router as a pyfunc model."""
    import mlflow

    connect(root, settings)
    with quiet_model_logging():
        return mlflow.pyfunc.load_model(f"models:/{router_model_name(settings['prefix'])}@{CHAMPION}")


def predict(root: Path, settings: Mapping[str, Any], texts: list[str], lang: str | None = None) -> list[dict]:
    """Label texts with the champion students: lang's champion when given, else through the champion router."""
    import mlflow
    import pandas as pd

    if lang is None:
        return load_router(root, settings).predict(pd.DataFrame({"text": texts})).to_dict("records")
    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    version = alias_version_or_none(client, name, CHAMPION)
    if version is None:
        raise RegistryError(f"{name} has no champion")
    with quiet_model_logging():
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    predictions = model.predict(texts)
    return [{"lang": lang, "label": row.label, "score": float(row.score), "student_version": version}
            for row in predictions.itertuples()]
