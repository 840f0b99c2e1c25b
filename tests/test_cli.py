"""The `polydistill` command line against a real registry: status, promote (refused, forced), rollback, predict."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_project_params, worse_copy
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.ops import pipeline_run

COMMANDS = ("run", "predict", "explain", "promote", "rollback", "status", "serve", "schedule", "ui")


@pytest.fixture
def runner(registry_project: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("POLYDISTILL_ROOT", str(registry_project))
    return CliRunner()


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None) -> None:
    result = CliRunner().invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_ui_prints_the_command_on_the_project_store(runner: CliRunner, registry_project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 0
    assert f"--backend-store-uri sqlite:///{registry_project}/mlflow.db -h 127.0.0.1" in result.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:s3cret@db.internal/mlflow")
    shown = runner.invoke(app, ["ui"]).output
    assert "postgresql://mlflow:***@db.internal/mlflow" in shown and "s3cret" not in shown


def test_commands_without_a_registry_print_one_line(runner: CliRunner) -> None:
    for command in (["predict", "some text"], ["promote", "--lang", "en"], ["rollback", "--lang", "en"],
                    ["predict", "--lang", "en", "text"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output


def test_status_promote_rollback_and_predict(runner: CliRunner, registry_project: Path) -> None:
    params = load_project_params(registry_project)
    pipeline_run.log_pipeline_run(registry_project, params)

    empty = runner.invoke(app, ["status"])
    assert empty.exit_code == 0
    assert [line.split()[:3] for line in empty.output.splitlines()[1:]] == [["en", "-", "1"], ["sl", "-", "1"],
                                                                            ["zh", "-", "1"]]
    for lang in ("en", "sl"):
        assert runner.invoke(app, ["promote", "--lang", lang]).exit_code == 0
    promoted = runner.invoke(app, ["promote", "--lang", "zh"])
    assert promoted.exit_code == 0 and "zh: version 1 is champion" in promoted.output
    assert "router: version 3" in promoted.output  # one per promotion: en, en+sl, en+sl+zh

    student = registry_project / "models/students/zh/kd"
    worse_copy(student, student, "zh")
    params["data"]["languages"] = ["zh"]
    pipeline_run.log_pipeline_run(registry_project, params)
    refused = runner.invoke(app, ["promote", "--lang", "zh"])
    assert refused.exit_code == 1 and "FAIL: validation macro-F1" in refused.output
    assert "stays challenger; champion is 1" in refused.output
    forced = runner.invoke(app, ["promote", "--lang", "zh", "--version", "2", "--force"])
    assert forced.exit_code == 0 and "forced by the operator" in forced.output and "router: version 4" in forced.output

    table = runner.invoke(app, ["status"]).output.splitlines()
    assert table[0].split()[:4] == ["lang", "champion", "challenger", "macro-F1"]
    assert table[3].split()[:5] == ["zh", "2", "-", "0.8000", "95.0%"]

    rolled = runner.invoke(app, ["rollback", "--lang", "zh"])
    assert rolled.exit_code == 0 and "rolled back from version 2 to version 1" in rolled.output
    again = runner.invoke(app, ["rollback", "--lang", "zh"])
    assert again.exit_code == 1 and "no previous champion" in again.output

    predicted = runner.invoke(app, ["predict", "--lang", "zh", "这家酒店很好。", "房间太脏了。"])
    lines = predicted.output.strip().splitlines()
    assert predicted.exit_code == 0 and len(lines) == 2
    assert all(line.split("\t")[0] == "zh" and line.split("\t")[1] in {"negative", "positive"} and
               line.split("\t")[3] == "v1" for line in lines)

    routed = runner.invoke(app, ["predict", "The film was a delight from start to finish.", "这家酒店的服务非常好。"])
    assert routed.exit_code == 0, routed.output
    assert [line.split("\t")[0] for line in routed.output.strip().splitlines()] == ["en", "zh"]
    unknown = runner.invoke(app, ["predict", "--lang", "id", "Filmnya bagus."])
    assert unknown.exit_code == 1 and "polydistill-student-id has no champion" in unknown.output
