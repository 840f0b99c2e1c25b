"""Shared test setup: offline environment, paths, and a throw-away copy of the repository."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from filelock import FileLock
from harness import (  # noqa: F401  (re-exported: the test modules import these from conftest)
    FIXTURES,
    REPO_ROOT,
    VENV_BIN,
    copy_repository,
    fixture_params,
    fixture_texts,
    free_port,
    repository_files,
    running_prefect_server,
    stages_run,
    wait_for_http,
    write_params,
)
from tiny_models import tiny_pretrained_encoder

from polydistill.config import set_offline_environment

set_offline_environment()
# `make test` exports the project's tracking URI; tests must never register into the project's own registry.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained encoder (Unigram tokenizer trained on the fixture corpus, 4-layer BERT)."""
    return tiny_pretrained_encoder(tmp_path_factory.mktemp("tiny") / "encoder", fixture_texts(),
                                   ["negative", "positive"])


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Prefect server for every flow the tests start (saves a temporary server per stage)."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # flows started by the tests report here instead of starting a server
        yield url
        if previous is None:
            os.environ.pop("PREFECT_API_URL")
        else:
            os.environ["PREFECT_API_URL"] = previous


PIPELINE_LANGUAGES = ["en", "sl", "zh"]  # the fixture corpus's languages in the pipeline tests' projects


@pytest.fixture
def repo_copy(tmp_path: Path, tiny_teacher: Path, prefect_server: str) -> Path:
    """A copy of the working tree as its own git repository, params.yaml set for the fixture corpus."""
    return copy_repository(tmp_path / "repo", fixture_params(PIPELINE_LANGUAGES, tiny_teacher))


class BuiltPipeline(NamedTuple):
    """A repository copy in which `dvc repro evaluate` has run, and that run's dvc output."""
    root: Path
    output: str


@pytest.fixture(scope="session")
def evaluated_pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path, prefect_server: str,
                       worker_id: str) -> BuiltPipeline:
    """repo_copy's project after `dvc repro evaluate`: every stage but register, so a test that copies it registers
    into a registry of its own. Built once per session: under pytest-xdist the first worker to ask builds it in the
    session's shared folder while the others wait. Never change it; copy it with `copy_built`."""
    session = tmp_path_factory.getbasetemp()
    shared = session if worker_id == "master" else session.parent
    folder, log = shared / "evaluated-pipeline", shared / "evaluated-pipeline.log"
    with FileLock(str(shared / "evaluated-pipeline.lock")):
        if not log.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed build of another worker
            root = copy_repository(folder, fixture_params(PIPELINE_LANGUAGES, tiny_teacher))
            built = run_dvc(root, "repro", "evaluate")
            assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
            log.write_text(built.stdout + built.stderr, encoding="utf-8")
    return BuiltPipeline(folder, log.read_text(encoding="utf-8"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test that copies the evaluated pipeline runs first and the others that copy it last: under
    pytest-xdist the worker that builds it starts at once while the other runs the rest, instead of waiting idle
    for the build."""
    copying = [item for item in items if "evaluated_pipeline" in getattr(item, "fixturenames", ())]
    if copying:
        items[:] = [copying[0], *(item for item in items if item not in copying), *copying[1:]]


def copy_built(built: BuiltPipeline, target: Path) -> Path:
    """A copy of a built project (git, DVC cache, checkpoints and all) at target."""
    shutil.copytree(built.root, target, symlinks=True)
    return target


def pipeline_environment(root: Path) -> dict[str, str]:
    """Environment for running dvc and the flows inside a repository copy (against the test Prefect server)."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "POLYDISTILL_ROOT": str(root),
        "PREFECT_HOME": str(root / ".prefect"),
        # the copy's own registry, as `make run` sets it: never one an earlier test left in os.environ
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{root / 'mlflow.db'}",
    }


def run_dvc(root: Path, *arguments: str, extra_environment: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run the venv's dvc in the repository copy and return the finished process (not checked)."""
    return subprocess.run([str(VENV_BIN / "dvc"), *arguments], cwd=root,
                          env={**pipeline_environment(root), **(extra_environment or {})},
                          capture_output=True, text=True, timeout=900)


def locked_outputs(root: Path, stages: list[str] | None = None) -> dict[str, Any]:
    """Every output of `stages` (default: all) as dvc.lock records it (its md5), the metrics files by their content
    without timings."""
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    paths = {out["path"]: out["md5"] for name, stage in lock["stages"].items() if stages is None or name in stages
             for out in stage.get("outs", [])}
    return {path: without_timings(json.loads((root / path).read_text(encoding="utf-8")))
            if path.startswith("metrics/") and path.endswith(".json") else md5 for path, md5 in paths.items()}


def without_timings(value: Any) -> Any:
    """A JSON value with every "seconds" entry (wall-clock time) removed."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key != "seconds"}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------------- registry


REGISTRY_LANGUAGES = ("en", "sl", "zh")


def registry_settings() -> dict:
    """params.yaml's registry section (the lead's defaults)."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))["registry"]


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite database, made once per session (migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def tiny_students(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny, real Hugging Face classifier per language (own seed each), standing in for trained students."""
    folder = tmp_path_factory.mktemp("students")
    return {lang: tiny_pretrained_encoder(folder / lang, fixture_texts(), ["negative", "positive"], layers=2,
                                          seed=index)
            for index, lang in enumerate(REGISTRY_LANGUAGES)}


def write_evaluation(root: Path, lang: str, macro_f1: float, ci: tuple[float, float], retention: float) -> None:
    """metrics/evaluate/<lang>.json in the evaluate stage's layout, with the KD student's quality as given."""
    kd = {"n": 40, "accuracy": macro_f1, "macro_f1": macro_f1, "macro_f1_ci_low": ci[0], "macro_f1_ci_high": ci[1],
          "ece": 0.05, "per_class": {"negative": {"f1": macro_f1, "support": 20}},
          "confusion_matrix": [[18, 2], [3, 17]]}
    evaluation = {
        "lang": lang, "test_rows": 40,
        "systems": {"kd_student": kd, "teacher": {**kd, "macro_f1": macro_f1 / retention}},
        "paired": {"retention": {"ratio": retention, "difference": macro_f1 - macro_f1 / retention},
                   "kd_gain": {"difference": 0.01, "ratio": 1.01}},
        "efficiency": {"kd_student": {"total_params": 24000, "weights_mb": 0.1, "latency_ms_median": 3.0}},
        "summary": {"lang": lang, "kd_macro_f1": macro_f1, "retention": retention},
    }
    path = root / f"metrics/evaluate/{lang}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation), encoding="utf-8")


VALIDATION_ROWS = 24  # per language, from the fixture corpus


def student_labels(folder: Path, texts: list[str]) -> list[str]:
    """The labels a student folder predicts, scored as the promotion gate scores a registered version."""
    from polydistill.model.runtime import probabilities_from_model

    router = registry_settings()["router"]
    probabilities = probabilities_from_model(folder, texts, router["max_length"], router["batch_size"], threads=1,
                                             runtime=router["runtime"])
    names = json.loads((folder / "config.json").read_text(encoding="utf-8"))["id2label"]
    return [names[str(index)] for index in probabilities.argmax(axis=1)]


def write_validation(root: Path, labels_by_lang: dict[str, tuple[list[str], list[str]]]) -> None:
    """data/prepared/validation.parquet with these (texts, labels) per language."""
    import pandas as pd

    frames = [pd.DataFrame({"id": [f"{lang}-v{index:03d}" for index in range(len(texts))], "text": texts,
                            "label": labels, "lang": lang, "source": "fixture"})
              for lang, (texts, labels) in labels_by_lang.items()]
    path = root / "data/prepared/validation.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)


def validation_texts(lang: str) -> list[str]:
    rows = [json.loads(line) for line in (FIXTURES / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["text"] for row in rows if row["lang"] == lang][:VALIDATION_ROWS]


def prepare_registry_workspace(root: Path, mlflow_db_template: Path, students: dict[str, Path]) -> dict:
    """A project folder as the register stage sees it: params, students, evaluations, a validation split on which
    each student is right by construction (its own predictions are the gold labels, teacher macro-F1 1.0) and its
    own mlflow.db. Returns the params."""
    params = fixture_params(list(students))
    params["registry"] = registry_settings()
    root.mkdir(parents=True)
    write_params(root, params)
    shutil.copy2(mlflow_db_template, root / "mlflow.db")
    for lang, student in students.items():
        shutil.copytree(student, root / f"models/students/{lang}/kd")
        write_evaluation(root, lang, 0.80, (0.74, 0.86), 0.95)
    write_validation(root, {lang: (validation_texts(lang), student_labels(student, validation_texts(lang)))
                            for lang, student in students.items()})
    teacher = {lang: {"ensemble": 1.0} for lang in students}
    (root / "metrics/soft_labels.json").write_text(json.dumps({"validation_macro_f1": teacher}), encoding="utf-8")
    return params


@pytest.fixture
def registry_project(tmp_path: Path, mlflow_db_template: Path, tiny_students: dict[str, Path],
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    """prepare_registry_workspace for the registry languages."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "project"
    prepare_registry_workspace(root, mlflow_db_template, tiny_students)
    return root


def least_predicted_label(student: Path, lang: str) -> str:
    """The label a student predicts least often on lang's validation texts."""
    predicted = student_labels(student, validation_texts(lang))
    labels = json.loads((student / "config.json").read_text(encoding="utf-8"))["id2label"].values()
    return min(labels, key=predicted.count)


def worse_copy(student: Path, destination: Path, lang: str) -> Path:
    """A copy of a student that always answers its least predicted label: worse than the student on the
    validation split prepare_registry_workspace writes (where the student is right on every row)."""
    return biased_copy(student, destination, least_predicted_label(student, lang))


def biased_copy(student: Path, destination: Path, label: str) -> Path:
    """A copy of a student whose classifier always answers `label`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if Path(student).resolve() != Path(destination).resolve():
        shutil.copytree(student, destination, dirs_exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(student)
    with torch.no_grad():
        model.classifier.bias.zero_()
        model.classifier.bias[model.config.label2id[label]] = 100.0
    model.save_pretrained(destination)
    return destination


def load_project_params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))


async def wait_for_deployment(name: str, server: subprocess.Popen, log_path: Path, timeout: float = 120) -> dict:
    """The served deployment once the server knows it (its schedules included)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

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


def commit_workspace(root: Path) -> None:
    """Commit the repository copy (dvc exp run needs a commit to branch experiments from)."""
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=polydistill tests", "-c", "user.email=tests@localhost", "commit", "-qm",
                    "pipeline run"], cwd=root, check=True)


@pytest.fixture(scope="module")
def tracking_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """PostgreSQL and `mlflow server` on a free port, data and artifacts in a temporary folder (one per module)."""
    from polydistill.ops.tracking_server import TrackingServerSettings, tracking_server

    section = load_project_params(REPO_ROOT)["tracking_server"]
    settings = TrackingServerSettings.from_params({**section, "port": free_port(),
                                                   "data_dir": str(tmp_path_factory.mktemp("tracking"))})
    with tracking_server(REPO_ROOT, settings) as server:
        yield server.url
