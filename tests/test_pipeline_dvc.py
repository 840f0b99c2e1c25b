"""The real DVC pipeline (each stage a Prefect flow) on the fixture corpus, in a throw-away repository copy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from conftest import run_dvc


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_data_plane_runs_is_incremental_and_reports(repo_copy: Path) -> None:
    first = run_dvc(repo_copy, "repro")
    assert first.returncode == 0, first.stdout + first.stderr

    prepared = read_json(repo_copy / "metrics/prepare.json")
    assert prepared["raw_rows"] == 307 and prepared["duplicates_removed"] == 3
    totals = {lang: sum(cell["total"] for cell in labels.values()) for lang, labels in prepared["rows"].items()}
    assert totals == {"en": 160, "sl": 44, "zh": 100}

    splits = {name: pd.read_parquet(repo_copy / f"data/prepared/{name}.parquet")
              for name in ("train", "validation", "test")}
    texts = [set(frame["text"]) for frame in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert read_json(repo_copy / "data/validation/report.json")["success"] is True

    balance = read_json(repo_copy / "metrics/balance.json")
    assert balance["teacher"]["rows"] == 200 and balance["transfer"]["rows"] == 150
    teacher = balance["teacher"]["languages"]
    assert set(teacher) == {"en", "sl", "zh"}
    assert teacher["sl"]["share_after"] > teacher["sl"]["share_before"], "alpha < 1 must lift the small language"
    assert all(stats["max_repeats_seen"] <= 3 for stats in teacher.values())
    assert (repo_copy / "plots/balance/balance_shares.png").stat().st_size > 0

    second = run_dvc(repo_copy, "repro")
    assert second.returncode == 0 and "up to date" in second.stdout, second.stdout

    metrics = run_dvc(repo_copy, "metrics", "show")
    assert "metrics/prepare.json" in metrics.stdout and "metrics/balance.json" in metrics.stdout

    params = yaml.safe_load((repo_copy / "params.yaml").read_text(encoding="utf-8"))
    params["balance"]["alpha"] = 0.5
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    status = run_dvc(repo_copy, "status", "--json")
    assert set(json.loads(status.stdout)) == {"balance"}, status.stdout


def test_failed_validation_stops_the_pipeline(repo_copy: Path) -> None:
    corpus = repo_copy / "tests/fixtures/corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    rows[0]["label"] = "neutral"
    corpus.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")

    result = run_dvc(repo_copy, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "label" in output and "neutral" in output and "data docs" in output.lower(), output
    assert not (repo_copy / "data/validation/report.json").exists()
    assert not (repo_copy / "data/balanced").exists() and not (repo_copy / "metrics/balance.json").exists()
