"""Benchmark 19: a longer teacher fine-tuning against the teacher's headroom over TF-IDF.

Issue #10 asks every language's KD student to beat TF-IDF. A student learns its teacher, so what it can reach is
bounded by how far the ensemble teacher (the transformer mixed with TF-IDF, the weight chosen per language on
validation log-loss, as the soft_labels stage does) stands above TF-IDF. This fine-tunes the teacher with
params.yaml's settings for more epochs (the run of params.yaml's own epochs is the pipeline's models/teacher, reused),
scores validation and test with the transformer in the soft labels' runtime, and reports per language: validation
and test macro-F1 of the transformer and the ensemble, the ensemble's test margin over TF-IDF with a paired bootstrap
interval, and the retention a student would need to reach TF-IDF. Validation says which teacher to keep; test
reports. The fine-tuning's seconds are the cost (the fold twins, fine-tuned with the teacher's settings, grow with
it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from bench.common import REPO_ROOT, load_project_params, require
from bench.seeds import gold_codes
from polydistill.model.metrics import paired_bootstrap_difference
from polydistill.model.soft_labels import (
    SoftLabelSettings,
    choose_weight,
    mix,
    softmax,
    tfidf_probabilities,
    transformer_logits,
)
from polydistill.model.teacher import train_teacher
from polydistill.model.training import TrainSettings

SIZES = {"quick": {"epochs": [2.0], "max_steps": 4, "languages": ["es"]},
         "full": {"epochs": [2.0], "max_steps": None, "languages": None}}
BOOTSTRAP_SAMPLES, CONFIDENCE, SEED = 1000, 0.95, 13
OUTPUT = REPO_ROOT / ".cache/bench/teacher_epochs"


class ScoredTeacher(NamedTuple):
    """A fine-tuned transformer and the soft-label settings (max_length, runtime) it is scored with."""

    folder: Path
    settings: SoftLabelSettings


def fine_tuned_teacher(overrides: dict[str, Any], params: dict[str, Any], output: Path) -> tuple[Path, float]:
    """The teacher fine-tuned with params.yaml's settings but `overrides` (evaluated only at its last step, as
    select_by last keeps it) into `output`; its folder and fine-tuning seconds. A killed run resumes from its
    checkpoint."""
    settings = TrainSettings.from_params({**params["teacher"], **overrides, "eval_every": 10**9})
    metrics = train_teacher(require(REPO_ROOT / "models/pretrained", "make run"),
                            REPO_ROOT / "data/balanced/teacher.parquet", REPO_ROOT / "data/prepared/validation.parquet",
                            output, output.with_suffix(".json"), output.parent / "runs", settings,
                            params["data"]["labels"])
    return output, float(metrics["seconds"])


def pipeline_teacher() -> tuple[Path, float]:
    """The default run's teacher and its fine-tuning seconds (as the stage recorded them)."""
    metrics = json.loads(require(REPO_ROOT / "metrics/teacher.json", "make run").read_text(encoding="utf-8"))
    return REPO_ROOT / "models/teacher", float(metrics["seconds"])


def split_scores(teacher: ScoredTeacher, frames: dict[str, pd.DataFrame], member: dict[str, np.ndarray],
                 labels: list[str], grid: list[float]) -> dict[str, Any]:
    """One language: the transformer's and the ensemble's probabilities on validation and test (`member`: TF-IDF's
    probabilities per split), the ensemble weight chosen on validation log-loss."""
    logits = {split: transformer_logits(teacher.folder, teacher.folder, frame, teacher.settings)
              for split, frame in frames.items()}
    weight, _ = choose_weight(gold_codes(frames["validation"], labels), logits["validation"], member["validation"],
                              grid)
    return {"weight": weight,
            "transformer": {split: softmax(values) for split, values in logits.items()},
            "ensemble": {split: np.exp(mix(logits[split], member[split], weight)) for split in frames}}


def macro_f1(frame: pd.DataFrame, probabilities: np.ndarray, labels: list[str]) -> float:
    return float(f1_score(gold_codes(frame, labels), probabilities.argmax(axis=1), average="macro"))


def measure_language(frames: dict[str, pd.DataFrame], teachers: dict[str, ScoredTeacher],
                     tfidf: dict[str, np.ndarray], labels: list[str], grid: list[float]) -> dict[str, Any]:
    """Per teacher: validation and test macro-F1 of both members' mixture and the transformer alone, and the
    ensemble's paired test margin over TF-IDF."""
    member = {split: np.stack([tfidf[row] for row in frame["id"]]) for split, frame in frames.items()}
    gold_test = gold_codes(frames["test"], labels)
    result: dict[str, Any] = {"tfidf": {split: macro_f1(frame, member[split], labels)
                                        for split, frame in frames.items()}}
    for name, teacher in teachers.items():
        scores = split_scores(teacher, frames, member, labels, grid)
        result[name] = {
            "weight": scores["weight"],
            **{f"{member}_{split}": macro_f1(frames[split], scores[member][split], labels)
               for member in ("transformer", "ensemble") for split in frames},
            "over_tfidf": paired_bootstrap_difference(gold_test, scores["ensemble"]["test"], member["test"],
                                                      BOOTSTRAP_SAMPLES, CONFIDENCE, SEED),
        }
    return result


def needed_retention(tfidf: float, teacher: float) -> float:
    """The share of the teacher's macro-F1 a student must keep to match TF-IDF's."""
    return tfidf / teacher


def compare_teachers(teachers: dict[str, ScoredTeacher], languages: list[str],
                     params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per language: measure_language of every teacher on validation and test, beside the pipeline's TF-IDF."""
    labels = params["data"]["labels"]
    settings = SoftLabelSettings.from_params(params["soft_labels"])
    splits = {split: pd.read_parquet(require(REPO_ROOT / f"data/prepared/{split}.parquet", "make run"))
              for split in ("train", "validation", "test")}
    tfidf = tfidf_probabilities(REPO_ROOT / "models/tfidf", {split: splits[split] for split in ("validation", "test")},
                                splits["train"], labels, settings.cross_fit_folds)
    results = {}
    for lang in languages:
        frames = {split: splits[split][splits[split]["lang"] == lang].reset_index(drop=True)
                  for split in ("validation", "test")}
        results[lang] = measure_language(frames, teachers, tfidf, labels, list(settings.weight_grid))
    return results


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    settings = SoftLabelSettings.from_params(params["soft_labels"])
    default_dir, default_seconds = pipeline_teacher()
    teachers = {f"{params['teacher']['epochs']:g} epoch (default)": ScoredTeacher(default_dir, settings)}
    seconds = {next(iter(teachers)): default_seconds}
    for epochs in sizes["epochs"]:
        name = f"{epochs:g} epochs" + (f" (max {sizes['max_steps']} steps)" if sizes["max_steps"] else "")
        folder, seconds[name] = fine_tuned_teacher({"epochs": epochs, "max_steps": sizes["max_steps"]}, params,
                                                   OUTPUT / f"teacher-{epochs:g}-epochs")
        teachers[name] = ScoredTeacher(folder, settings)
    results = compare_teachers(teachers, languages or sizes["languages"] or params["data"]["languages"], params)
    return summarise(results, list(teachers), seconds, sizes)


def preferred_on_validation(results: dict[str, dict[str, Any]], teachers: list[str]) -> str:
    """The teacher whose ensemble has the highest mean validation macro-F1 over languages (ties: the first)."""
    return max(teachers, key=lambda name: np.mean([result[name]["ensemble_validation"]
                                                    for result in results.values()]))


def comparison_tables(results: dict[str, dict[str, Any]], teachers: list[str],
                      seconds: dict[str, float]) -> list[dict[str, Any]]:
    """The per-language table and the table of means over languages (with the fine-tuning's seconds)."""
    rows = []
    for lang, result in results.items():
        for name in teachers:
            entry, margin = result[name], result[name]["over_tfidf"]
            rows.append([lang, name, f"{entry['transformer_validation']:.3f}", f"{entry['ensemble_validation']:.3f}",
                         f"{entry['transformer_test']:.3f}", f"{entry['ensemble_test']:.3f}",
                         f"{result['tfidf']['test']:.3f}",
                         f"{margin['difference']:+.3f} ({margin['difference_ci_low']:+.3f} to "
                         f"{margin['difference_ci_high']:+.3f})",
                         f"{needed_retention(result['tfidf']['test'], entry['ensemble_test']):.1%}",
                         f"{entry['weight']:.2f}"])
    means = [[name, f"{np.mean([r[name]['ensemble_validation'] for r in results.values()]):.3f}",
              f"{np.mean([r[name]['ensemble_test'] for r in results.values()]):.3f}", f"{seconds[name]:.0f}"]
             for name in teachers]
    return [
        {"title": "Per language: macro-F1 of the transformer and of the ensemble teacher (weight chosen on "
                  "validation log-loss), the ensemble's paired test margin over TF-IDF (95% interval) and the "
                  "retention a student needs to match TF-IDF",
         "columns": ["lang", "teacher", "transformer validation", "ensemble validation", "transformer test",
                     "ensemble test", "TF-IDF test", "ensemble − TF-IDF (test)", "retention needed",
                     "transformer weight"], "rows": rows},
        {"title": f"Mean over languages and the fine-tuning's seconds; validation prefers "
                  f"{preferred_on_validation(results, teachers)}",
         "columns": ["teacher", "ensemble validation", "ensemble test", "fine-tuning s"], "rows": means},
    ]


def summarise(results: dict[str, dict[str, Any]], teachers: list[str], seconds: dict[str, float],
              sizes: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "teacher_epochs", "title": "19. A longer teacher fine-tuning and the headroom over TF-IDF",
        "config": sizes, "results": results, "fine_tuning_seconds": seconds,
        "preferred_on_validation": preferred_on_validation(results, teachers),
        "tables": comparison_tables(results, teachers, seconds),
        "notes": ["One fine-tuning per teacher (seed 13): the teachers differ by one seed's noise besides their "
                  "epochs. The fold twins are fine-tuned with the teacher's settings, so a longer teacher makes "
                  "them longer by the same factor."],
    }
