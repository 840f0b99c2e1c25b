"""The fan-out's plan: which stages start first, and which stages' language tasks leave their process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.fanout import TRANSFER_REPORT, executor_settings, longest_first, stage_environment, stage_task_runner

STAGES = ["distill@en", "distill@es", "distill@id", "distill@sl", "distill@zh"]
SECTION = {"kind": "dask", "address": None, "workers": 2, "stages": "distill@", "language_tasks": False}


def write_transfer_rows(root: Path, rows: dict[str, int]) -> None:
    report = root / TRANSFER_REPORT
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"languages": {lang: {"rows": count} for lang, count in rows.items()}}))


def test_stages_start_with_the_most_transfer_rows_and_ties_keep_their_order(tmp_path: Path) -> None:
    write_transfer_rows(tmp_path, {"en": 8924, "es": 1665, "id": 2263, "sl": 2263, "zh": 12155})
    assert longest_first(tmp_path, STAGES) == ["distill@zh", "distill@en", "distill@id", "distill@sl", "distill@es"]


def test_without_a_transfer_report_the_stages_keep_dvc_yamls_order(tmp_path: Path) -> None:
    assert longest_first(tmp_path, STAGES) == STAGES
    write_transfer_rows(tmp_path, {"zh": 10})
    assert longest_first(tmp_path, STAGES) == ["distill@zh", *STAGES[:4]]


@pytest.mark.parametrize(("kind", "language_tasks", "fans_out"),
                         [("dask", True, True), ("dask", False, False), ("serial", True, False)])
def test_language_tasks_leave_the_stage_only_on_dask_when_asked(kind: str, language_tasks: bool,
                                                                fans_out: bool) -> None:
    settings = executor_settings({**SECTION, "language_tasks": language_tasks}, kind=kind)
    assert settings.fans_out_language_tasks is fans_out


@pytest.mark.parametrize("language_tasks", [False, True])
def test_a_stage_starts_a_dask_cluster_only_when_its_language_tasks_go_there(
        language_tasks: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    section = {**SECTION, "language_tasks": language_tasks}
    (tmp_path / "params.yaml").write_text(json.dumps({"executor": section}))  # JSON is YAML
    monkeypatch.setenv("POLYDISTILL_ROOT", str(tmp_path))
    monkeypatch.setenv("POLYDISTILL_EXECUTOR", "dask")
    runner = stage_task_runner()  # built, not entered: no cluster starts here
    assert isinstance(runner, DaskTaskRunner if language_tasks else ThreadPoolTaskRunner)


def test_fanned_out_stages_wait_passively_unless_the_user_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert stage_environment("/project")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert stage_environment("/project")["POLYDISTILL_ROOT"] == "/project"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert stage_environment("/project")["OMP_WAIT_POLICY"] == "ACTIVE"
