"""The real DVC pipeline (each stage a Prefect flow) on the fixture corpus and a tiny teacher, in a repository copy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    BuiltPipeline,
    commit_workspace,
    copy_built,
    load_project_params,
    locked_outputs,
    pipeline_environment,
    run_dvc,
    stages_run,
    write_params,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from polydistill.durable import is_complete, retired_path
from polydistill.faults import KILL_AT_VARIABLE
from tasks.placement import PLACEMENT_LINE

LANGUAGES = ("en", "sl", "zh")
SYSTEMS = {"teacher", "teacher_transformer", "kd_student", "ce_student", "tfidf"}
EVERY_STAGE_BUT_REGISTER = ["fetch", "prepare", "validate", "balance", "unlabelled", "transfer", "word_frequencies",
                            "pretrained", "baseline", "train_teacher", "fold_teachers", "soft_labels",
                            *(f"distill@{lang}" for lang in LANGUAGES), "evaluate"]  # in any order


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def stages_to_rerun(root: Path, section: str, key: str, value: object) -> set[str]:
    """Stages a repro would run after one params.yaml change: the changed ones and all downstream (then undone)."""
    original = (root / "params.yaml").read_text(encoding="utf-8")
    params = yaml.safe_load(original)
    params[section][key] = value
    write_params(root, params)
    dry_run = run_dvc(root, "repro", "--dry", "--force-downstream")
    (root / "params.yaml").write_text(original, encoding="utf-8")
    return set(stages_run(dry_run.stdout))


def assert_data_plane(root: Path) -> None:
    prepared = read_json(root / "metrics/prepare.json")
    assert prepared["raw_rows"] == 307 and prepared["duplicates_removed"] == 3
    totals = {lang: sum(cell["total"] for cell in labels.values()) for lang, labels in prepared["rows"].items()}
    assert totals == {"en": 160, "sl": 44, "zh": 100}
    texts = [set(pd.read_parquet(root / f"data/prepared/{name}.parquet")["text"])
             for name in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert read_json(root / "data/validation/report.json")["success"] is True
    balance = read_json(root / "metrics/balance.json")
    assert balance["teacher"]["rows"] == 200
    teacher = balance["teacher"]["languages"]
    assert set(teacher) == set(LANGUAGES)
    assert teacher["sl"]["share_after"] > teacher["sl"]["share_before"], "alpha < 1 must lift the small language"
    assert all(stats["max_repeats_seen"] <= 3 for stats in teacher.values())
    assert (root / "plots/balance/balance_shares.png").stat().st_size > 0
    transfer = read_json(root / "metrics/transfer.json")
    assert transfer["rows"] == 300 and transfer["held_out_overlaps"] == 0
    assert transfer["languages"]["en"]["pool_dropped"]["overlaps_labelled_or_held_out"] == 1
    assert transfer["languages"]["sl"]["unlabelled"] > 0 and transfer["languages"]["sl"]["augmented"] > 0
    assert read_json(root / "data/unlabelled/provenance.json")["sources"]["file"]["rows_written"] == 19
    assert read_json(root / "data/word_frequencies/provenance.json")["words_per_language"] == {
        "en": 66, "sl": 37, "zh": 50}


def assert_model_plane(root: Path) -> None:
    teacher_vocab = AutoTokenizer.from_pretrained(root / "models/teacher").vocab_size
    fingerprint = read_json(root / "data/soft_labels/fingerprint.json")
    assert set(fingerprint["ensemble"]["weights"]) == set(LANGUAGES)
    assert set(read_json(root / "metrics/soft_labels.json")["memorisation_gap"]) == set(LANGUAGES)
    twins = read_json(root / "metrics/fold_teachers.json")["twins"]
    assert [twin["fold"] for twin in twins] == [0, 1] and all(twin["train_rows"] > 0 for twin in twins)
    assert set(read_json(root / "metrics/soft_labels.json")["scored_by_fold_teachers"]) == set(LANGUAGES)
    for lang in LANGUAGES:
        distilled = read_json(root / f"metrics/distill/{lang}.json")
        assert distilled["student"]["layers"] == [0, 2] and distilled["student"]["vocab_size"] < teacher_vocab
        assert distilled["student"]["word_list_words"] > 0
        for variant in ("kd", "ce"):
            folder = root / f"models/students/{lang}/{variant}"
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            assert model.config.num_hidden_layers == 2 and model.config.id2label == {0: "negative", 1: "positive"}
            assert AutoTokenizer.from_pretrained(folder).vocab_size == distilled["student"]["vocab_size"]
        evaluation = read_json(root / f"metrics/evaluate/{lang}.json")
        assert set(evaluation["systems"]) == SYSTEMS
        assert evaluation["systems"]["kd_student"]["n"] == evaluation["test_rows"] > 0
        teacher_params = AutoModelForSequenceClassification.from_pretrained(root / "models/teacher").num_parameters()
        student_params = AutoModelForSequenceClassification.from_pretrained(
            root / f"models/students/{lang}/kd").num_parameters()
        assert evaluation["summary"]["compression"] == pytest.approx(teacher_params / student_params)
        assert 0 < evaluation["segmentation"]["identical_share"] <= 1
        assert (root / f"plots/evaluate/confusion_{lang}.png").exists()
    summary = (root / "reports/evaluation.md").read_text(encoding="utf-8")
    assert all(f"| {lang} " in summary for lang in LANGUAGES)
    assert "## Error analysis" in summary and all(f"### {lang}\nThe KD student is wrong on" in summary
                                                  for lang in LANGUAGES)
    assert_model_cards(root)


def assert_model_cards(root: Path) -> None:
    """Every registered student version carries its card, with its own figures and the gate's decision."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not an earlier test's exported MLFLOW_REGISTRY_URI
    registry = read_json(root / "metrics/registry.json")
    for lang, entry in registry["languages"].items():
        version = client.get_model_version(f"polydistill-student-{lang}", str(entry["version"]))
        kd_macro_f1 = read_json(root / f"metrics/evaluate/{lang}.json")["systems"]["kd_student"]["macro_f1"]
        assert version.description.startswith(f"# polydistill-student-{lang} version {entry['version']}")
        assert f"| **this student** | {kd_macro_f1:.3f}" in version.description
        verdict = "promoted to champion" if entry["promoted"] else "refused: stays challenger"
        assert f"**{verdict}**" in version.description and "## Known limitations" in version.description
        card_path = client.download_artifacts(version.run_id, f"model_card/{lang}.md", str(root / "cards"))
        assert Path(card_path).read_text(encoding="utf-8") == version.description


def test_pipeline_runs_end_to_end_and_reruns_only_what_changed(evaluated_pipeline: BuiltPipeline,
                                                               tmp_path: Path) -> None:
    ran = stages_run(evaluated_pipeline.output)
    assert sorted(ran) == sorted(EVERY_STAGE_BUT_REGISTER), ran
    assert re.search(r"evaluation: language 3/3 \(100%\), kd_f1_en 0\.\d{4}", evaluated_pipeline.output)
    repo_copy = copy_built(evaluated_pipeline, tmp_path / "repo")
    first = run_dvc(repo_copy, "repro")
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-5000:]
    assert stages_run(first.stdout) == ["register"], first.stdout[-3000:]
    assert_data_plane(repo_copy)
    assert_model_plane(repo_copy)

    second = run_dvc(repo_copy, "repro")
    assert second.returncode == 0 and "up to date" in second.stdout, second.stdout
    assert_killed_stages_resume_to_the_same_outputs(repo_copy)

    assert_dask_fan_out_matches_serial_repro(repo_copy)

    metrics = run_dvc(repo_copy, "metrics", "show")
    for path in ("metrics/prepare.json", "metrics/balance.json", "metrics/teacher.json", "metrics/evaluate/zh.json"):
        assert path in metrics.stdout

    students_and_after = {f"distill@{lang}" for lang in LANGUAGES} | {"evaluate", "register"}
    assert stages_to_rerun(repo_copy, "distill", "temperature", 4.0) == students_and_after
    after_balance = stages_to_rerun(repo_copy, "balance", "alpha", 0.5)
    assert {"balance", "train_teacher", "fold_teachers"} <= after_balance
    after_folds = stages_to_rerun(repo_copy, "fold_teachers", "folds", 3)
    assert after_folds == {"fold_teachers", "soft_labels"} | students_and_after
    assert not after_balance & {"fetch", "prepare", "validate", "pretrained", "baseline", "unlabelled", "transfer",
                                "word_frequencies"}
    assert stages_to_rerun(repo_copy, "word_frequencies", "max_words", 10) == {"word_frequencies"} | students_and_after
    after_transfer = stages_to_rerun(repo_copy, "transfer", "unlabelled_fraction", 0.25)
    assert after_transfer == {"transfer", "soft_labels"} | students_and_after

    commit_workspace(repo_copy)
    older = run_dvc(repo_copy, "exp", "run", "-S", "transfer.sources=[]")  # the transfer set before extra sources
    assert older.returncode == 0, older.stdout[-5000:] + older.stderr[-5000:]
    languages = read_json(repo_copy / "metrics/transfer.json")["languages"]
    assert all(entry["unlabelled"] == entry["augmented"] == 0 for entry in languages.values())
    assert read_json(repo_copy / "metrics/distill/sl.json")["transfer_rows"] == {"labelled": languages["sl"]["rows"]}


def assert_dask_fan_out_matches_serial_repro(root: Path) -> None:
    """With one torch thread per task, the pipeline flow with the dask executor and a serial `dvc repro` give the
    same dvc.lock, outputs and quality figures: soft labels scored one task per language on 2 one-thread workers,
    the distill stages at once on them (then `dvc commit`), evaluate's quality per language on them. Every kind of
    task ran in two worker processes; the soft-label and student tasks at overlapping times. (On the fixture an
    evaluate task takes 0.15-0.5 s, less than one worker's first task can start after the other's (0.7 s in one
    fresh-clone run), so their overlap would be timing luck.)"""
    params = load_project_params(root)
    for section in ("soft_labels", "distill", "evaluate"):
        params[section]["threads"] = 1
    params["executor"]["language_tasks"] = True
    write_params(root, params)  # soft_labels and everything after it are stale now
    fanned = subprocess.run([sys.executable, "-m", "flows.pipeline", "run", "--executor", "dask"], cwd=root,
                            env=pipeline_environment(root), capture_output=True, text=True, timeout=900)
    output = fanned.stdout + fanned.stderr
    assert fanned.returncode == 0, output[-5000:]
    transfer_rows = read_json(root / "metrics/transfer.json")["languages"]
    longest_first = [f"distill@{lang}" for lang in sorted(LANGUAGES, key=lambda lang: -transfer_rows[lang]["rows"])]
    assert f"fan-out on Dask (2 local workers): {', '.join(longest_first)}" in output
    placements = [match.groupdict() for match in PLACEMENT_LINE.finditer(output)]
    started = {entry["name"]: float(entry["start"]) for entry in placements if entry["name"].startswith("distill@")}
    assert started[longest_first[-1]] >= max(started[stage] for stage in longest_first[:-1]), started
    for kind in ("soft_labels:", "distill@", "evaluate:"):
        ran = [(int(entry["pid"]), float(entry["start"]), float(entry["end"]))
               for entry in placements if entry["name"].startswith(kind)]
        assert len(ran) == len(LANGUAGES), f"{kind} tasks: {ran}"
        assert len({pid for pid, _, _ in ran}) >= 2, f"{kind} tasks ran in one process: {ran}"
        if kind != "evaluate:":
            assert any(a[1] < b[2] and b[1] < a[2] for a in ran for b in ran if a[0] != b[0]), f"{kind}: no overlap"
    recomputed = [stage for stage in locked_stages(root) if stage not in ("evaluate", "register")]
    fanned_outputs, fanned_quality = locked_outputs(root, recomputed), evaluation_quality(root)
    for finished in (root / ".cache/runs").glob("student-*"):
        shutil.rmtree(finished)
    serial = run_dvc(root, "repro", "--force", "--downstream", "soft_labels")
    assert serial.returncode == 0, serial.stdout[-3000:] + serial.stderr[-3000:]
    assert locked_outputs(root, recomputed) == fanned_outputs and evaluation_quality(root) == fanned_quality
    assert "up to date" in run_dvc(root, "status").stdout


def locked_stages(root: Path) -> list[str]:
    return list(yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))["stages"])


def evaluation_quality(root: Path) -> dict:
    """Each language's evaluation figures except speed (measured again in every run), and the confusion CSVs."""
    return {lang: ({key: value for key, value in read_json(root / f"metrics/evaluate/{lang}.json").items()
                    if key not in ("efficiency", "summary")},
                   (root / f"plots/evaluate/confusion_{lang}.csv").read_text(encoding="utf-8"))
            for lang in LANGUAGES}


def assert_killed_stages_resume_to_the_same_outputs(root: Path) -> None:
    """kill -9 of train_teacher and distill@sl inside checkpoint writes (their finished runs removed first), then
    `dvc repro -f` of each stage: it resumes, and every output is bit-identical to the uninterrupted run's."""
    before = locked_outputs(root)
    kills = [("train_teacher", "checkpoint:removing-old@3", "teacher-*"),
             ("distill@sl", "checkpoint:moved-aside@1", "student-sl-kd-*")]
    for stage, point, runs in kills:
        for finished in (root / ".cache/runs").glob(runs):
            shutil.rmtree(finished)
        killed = run_dvc(root, "repro", "-f", "-s", stage, extra_environment={KILL_AT_VARIABLE: point})
        assert killed.returncode != 0, f"{stage} was not killed at {point}"
        checkpoint = next((root / ".cache/runs").glob(runs)) / "checkpoint"
        assert is_complete(checkpoint) or is_complete(retired_path(checkpoint)), "no checkpoint to resume from"
        resumed = run_dvc(root, "repro", "-f", "-s", stage)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert locked_outputs(root) == before
    assert "up to date" in run_dvc(root, "status").stdout


def test_failed_validation_stops_the_pipeline(repo_copy: Path) -> None:
    corpus = repo_copy / "tests/fixtures/corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    rows[0]["label"] = "neutral"
    corpus.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")

    result = run_dvc(repo_copy, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "label" in output and "neutral" in output and "data docs" in output.lower(), output[-5000:]
    assert not (repo_copy / "data/validation/report.json").exists()
    assert not (repo_copy / "data/balanced").exists() and not (repo_copy / "models/teacher").exists()
