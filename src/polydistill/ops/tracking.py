"""The MLflow connection and what every run logs: the store's URI (credentials redacted wherever it is shown), the
experiment, flattened params and metrics, and the workspace's lineage.

Tracking and registry share one URI: MLFLOW_TRACKING_URI if set, else `registry.tracking_uri` from params, else
`sqlite:///<project root>/mlflow.db`; with a SQLite store the artifacts go to `mlartifacts/` beside the database.
Never a file store: every run goes to the named experiment, never to the default one (whose artifacts would land
in ./mlruns). mlflow is imported inside the functions: it takes over a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from polydistill.data.archives import sha256_of

ARTIFACT_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
REDACTED = "***"
SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key|credential|signature", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------- connection


def tracking_uri(root: Path, configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else the project's SQLite database."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """The URI with its password and secret-looking query values replaced by *** (safe to print or log)."""
    parts = urlsplit(uri)
    redacted = uri
    if "@" in parts.netloc:
        credentials, host = parts.netloc.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        redacted = redacted.replace(parts.netloc, f"{user}:{REDACTED}@{host}" if ":" in credentials
                                    else f"{REDACTED}@{host}", 1)
    if parts.query:
        query = urlencode([(key, REDACTED if SECRET_QUERY_KEYS.search(key) else value)
                           for key, value in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        redacted = redacted.replace(f"?{parts.query}", f"?{query}", 1)
    return redacted


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
    """All of params.yaml flattened to strings (lists as JSON, URIs redacted) for mlflow.log_params."""
    def shown(key: str, value: Any) -> str:
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        return redact_uri(text) if key.endswith("_uri") and value else text

    return {key: shown(key, value) for key, value in flatten(params).items()}


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


# ---------------------------------------------------------------------------------------------------- logging


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


# ---------------------------------------------------------------------------------------------------- monitoring


def log_monitor_run(root: Path, settings: Mapping[str, Any], report: Mapping[str, Any], files: list[Path]) -> str:
    """One `monitor` run in the experiment: per-language metrics of the monitor report, the report files as
    artifacts, the flagged languages as a tag. Returns the run id."""
    import mlflow

    client = connect(root, settings)
    metrics = {"rows": report["rows"], "flagged_languages": len(report["flagged_languages"])}
    for lang, entry in report["languages"].items():
        metrics.update(numeric_metrics({key: entry[key] for key in ("rows", "answered", "labels", "confidence",
                                                                      "shadow") if key in entry}, f"{lang}."))
        metrics[f"{lang}.flagged"] = float(entry["flagged"])
        metrics.update({f"{lang}.drift.{feature}.ks": result["ks_statistic"]
                        for feature, result in entry.get("drift", {}).items()})
    with mlflow.start_run(experiment_id=experiment_id(client, settings["experiment"]), run_name="monitor",
                          tags={"stage": "monitor", "flagged": ",".join(report["flagged_languages"]) or "none"}) as run:
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id
