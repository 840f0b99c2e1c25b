"""Races on one registry: two promotions of the same language at once, and a promotion during a router build."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pytest
from conftest import biased_copy, least_predicted_label, load_project_params
from mlflow import MlflowClient
from race_workers import promote_at_barrier

from polydistill.ops import pipeline_run, promotion, registry, serving, tracking

START_TIMEOUT_S = 120  # the two spawned workers' imports (mlflow, torch) under load
BARRIER_TIMEOUT_S = 15  # longer than the skew of two promotions started together; the lock holder waits this alone


def register(root: Path, params: dict, student: Path) -> str:
    shutil.copytree(student, root / "models/students/en/kd", dirs_exist_ok=True)
    return pipeline_run.log_pipeline_run(root, params)["languages"]["en"]["version"]


def history_is_consistent(client: MlflowClient, promoted: int) -> bool:
    """The history ends at the champion and records every promotion (no lost update)."""
    history = registry.champion_history(client, "polydistill-student-en")
    return history[-1] == registry.alias_version(client, "polydistill-student-en", "champion") and \
        len(history) == 1 + promoted


@pytest.mark.parametrize(("use_lock", "backend"), [
    (True, "sqlite"), (False, "sqlite"), pytest.param(True, "tracking server", marks=pytest.mark.slow)],
    ids=["with-lock", "without-lock", "with-lock-on-a-postgres-tracking-server"])
def test_two_promotions_of_one_language_at_once(registry_project: Path, tiny_students: dict[str, Path],
                                                 use_lock: bool, backend: str, request: pytest.FixtureRequest,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """v1 (champion, weak), v2 (right on every row) and v3 (v1's answers, other weights) are promoted at once.
    With the lock every promotion is gated against the champions before it; without it both pass against the stale
    champion v1 and one of them is lost from the history: the check below catches that."""
    root, params = registry_project, load_project_params(registry_project)
    params["data"]["languages"] = ["en"]
    settings = params["registry"]
    if backend == "tracking server":
        settings["tracking_uri"] = request.getfixturevalue("tracking_url")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", settings["tracking_uri"])  # the spawned workers inherit it
    settings["gate"].update(min_macro_f1=0.0, min_retention=0.0)
    original = shutil.copytree(root / "models/students/en/kd", root / "original-en")
    weak = least_predicted_label(original, "en")
    assert register(root, params, biased_copy(original, root / "v1", weak)) == "1"
    assert promotion.promote(root, settings, "en", "1").promoted
    assert register(root, params, original) == "2"
    assert register(root, params, biased_copy(tiny_students["sl"], root / "v3", weak)) == "3"

    context = multiprocessing.get_context("spawn")
    started, barrier = context.Barrier(2, timeout=START_TIMEOUT_S), context.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    results = context.Queue()
    workers = [context.Process(target=promote_at_barrier,
                               args=(str(root), settings, "en", version, started, barrier, use_lock, results))
               for version in ("2", "3")]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    promoted = sum(outcome["promoted"] for outcome in outcomes)
    client = tracking.connect(root, settings)
    if use_lock:
        assert history_is_consistent(client, promoted)
        assert registry.alias_version(client, "polydistill-student-en", "champion") == "2"
    else:
        assert promoted == 2 and not history_is_consistent(client, promoted)


def test_a_promotion_during_a_router_build_is_not_lost(registry_project: Path, tiny_students: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root, params = registry_project, load_project_params(registry_project)
    settings, languages = params["registry"], params["data"]["languages"]
    pipeline_run.log_pipeline_run(root, params)
    for lang in languages:
        assert promotion.promote(root, settings, lang).promoted
    en = root / "models/students/en/kd"
    relabelled = shutil.copytree(en, root / "en-v2")
    (relabelled / "README.md").write_text("same weights, another folder hash\n", encoding="utf-8")
    assert register(root, {**params, "data": {**params["data"], "languages": ["en"]}}, relabelled) == "2"

    real_build, built = serving.log_router_version, []

    def build_then_promote(*arguments: object) -> str:
        version = real_build(*arguments)
        if not built:  # the en champion moves while the first router version is being built
            assert promotion.promote(root, settings, "en", "2").promoted
        built.append(version)
        return version

    monkeypatch.setattr(serving, "log_router_version", build_then_promote)
    version = serving.register_router(root, settings, languages)
    client = tracking.connect(root, settings)
    assert built == ["1", "2"] and version == "2"
    assert serving.bundled_versions(client, "polydistill-router", version)["en"] == "2"
    assert registry.alias_version(client, "polydistill-router", "champion") == "2"
