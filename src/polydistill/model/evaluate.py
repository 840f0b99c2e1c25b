"""The evaluate stage: every language's teacher, KD student, CE-only student and TF-IDF baseline on its test split.

Writes metrics/<lang>.json (quality with bootstrap CIs, calibration, retention, KD gain, size, CPU speed), DVC plots
(grouped macro-F1 bars, confusion matrices) and a Markdown summary table. Quality is per language and independent
(evaluate_language_quality, which may run on any worker); speed is measured afterwards, one language after another
in one process (finish_evaluation), so that no figure is taken while other work competes for the cores.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polydistill.model.error_analysis import ErrorSettings, error_analysis, error_analysis_markdown
from polydistill.model.metrics import (
    SpeedSettings,
    classification_metrics,
    markdown_summary,
    measure_speeds,
    model_size,
    paired_bootstrap_difference,
    paired_speedup,
    plot_confusion_matrices,
    plot_grouped_bars,
    write_bars_csv,
    write_confusion_csv,
)
from polydistill.model.runtime import TextClassifier, load_text_classifier, probabilities_from_model
from polydistill.model.soft_labels import load_soft_labels, softmax, teacher_fingerprint
from polydistill.model.student import student_segmentation
from polydistill.progress import Progress

SUMMARY_COLUMNS = [
    ("lang", "lang", ""),
    ("teacher_macro_f1", "teacher F1", ".3f"),
    ("kd_macro_f1", "KD student F1", ".3f"),
    ("ce_macro_f1", "CE-only F1", ".3f"),
    ("tfidf_macro_f1", "TF-IDF F1", ".3f"),
    ("retention", "retention", ".1%"),
    ("kd_gain", "KD gain", "+.3f"),
    ("segmented_as_teacher", "segmented as teacher", ".0%"),
    ("student_params", "student params", ",d"),
    ("compression", "fewer params", ".1f"),
    ("student_throughput", "student texts/s", ".0f"),
    ("speedup", "speed-up", ".1f"),
    ("student_latency_ms", "student ms (1 text)", ".1f"),
    ("latency_speedup", "latency gain", ".1f"),
]


@dataclass(frozen=True)
class EvaluateSettings:
    """The evaluate section of params.yaml: the quality knobs, and the speed and error-analysis settings built from
    the same section."""

    threads: int              # torch and BLAS threads, for quality and for every speed figure
    max_length: int
    batch_size: int
    bootstrap_samples: int
    confidence: float
    ece_bins: int
    seed: int
    speed: SpeedSettings
    errors: ErrorSettings

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> EvaluateSettings:
        quality = {name: section[name] for name in cls.__dataclass_fields__ if name not in ("speed", "errors")}
        return cls(**quality, speed=SpeedSettings.from_params(section),
                   errors=ErrorSettings(examples=section["error_examples"], text_chars=section["error_text_chars"]))


def teacher_probabilities(soft_dir: Path, teacher_dir: Path, fold_teachers_dir: Path | None, tfidf_dir: Path | None,
                          test: pd.DataFrame, labels: list[str], max_length: int) -> dict[str, np.ndarray]:
    """The teacher's stored test-set outputs as probabilities: the combination and each member.

    fold_teachers_dir: the teacher's fold twins (None: it has none); tfidf_dir: the TF-IDF member of the ensemble
    teacher, None when the teacher is the transformer alone.
    """
    expected = teacher_fingerprint(teacher_dir, labels, max_length, tfidf_dir, fold_teachers_dir)
    systems = {"teacher": softmax(load_soft_labels(soft_dir, "test", test, expected, "teacher_logits")),
               "teacher_transformer": softmax(load_soft_labels(soft_dir, "test", test, expected,
                                                               "transformer_logits"))}
    if "tfidf_log_probs" in pd.read_parquet(soft_dir / "test.parquet", columns=None).columns:
        systems["tfidf"] = np.exp(load_soft_labels(soft_dir, "test", test, expected, "tfidf_log_probs"))
    return systems


@dataclass(frozen=True)
class LanguageQuality:
    """One language's test-set result without the speed figures, and the gold labels and KD student predictions
    that its confusion plot needs."""

    result: dict[str, Any]
    gold: np.ndarray
    kd_predictions: np.ndarray


def evaluate_language_quality(lang: str, paths: dict[str, Path], settings: EvaluateSettings, labels: list[str],
                              max_length: int, mode: str, runtime: str) -> LanguageQuality:
    """Every system's quality on one language's test rows (students in the serving `runtime`), with
    `settings.threads` threads for torch and for BLAS, so that it computes the same bits on any worker."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=settings.threads):
        return _evaluate_language_quality(lang, paths, settings, labels, max_length, mode, runtime)


def _evaluate_language_quality(lang: str, paths: dict[str, Path], settings: EvaluateSettings, labels: list[str],
                               max_length: int, mode: str, runtime: str) -> LanguageQuality:
    import torch

    torch.set_num_threads(settings.threads)
    test = pd.read_parquet(paths["test"])
    lang_paths = language_paths(paths, lang, mode)
    mask = (test["lang"] == lang).to_numpy()
    lang_test = test[mask].reset_index(drop=True)
    if mode == "shared":  # the shared soft labels cover every language's test rows
        teacher = {name: values[mask] for name, values in teacher_probabilities(
            paths["soft_labels"], paths["teacher"], paths["fold_teachers"], paths["teacher_tfidf"], test, labels,
            max_length).items()}
    else:
        teacher = teacher_probabilities(lang_paths["soft_labels"], lang_paths["teacher"], None, paths["teacher_tfidf"],
                                        lang_test, labels, max_length)
    result, probabilities = evaluate_language(lang, lang_test, teacher, lang_paths, settings, labels, runtime)
    gold = lang_test["label"].map({label: index for index, label in enumerate(labels)}).to_numpy()
    return LanguageQuality(result, gold, probabilities["kd_student"].argmax(axis=1))


def evaluate_language(lang: str, test: pd.DataFrame, teacher: dict[str, np.ndarray], paths: dict[str, Path],
                      settings: EvaluateSettings, labels: list[str],
                      runtime: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """All systems on one language's test rows: quality, retention, KD gain, segmentation and errors.

    The students are scored as served, in `runtime`. Returns the result and each system's test probabilities.
    """
    label_ids = {label: index for index, label in enumerate(labels)}
    gold = test["label"].map(label_ids).to_numpy()
    texts = test["text"].tolist()
    students = {"kd_student": paths["students"] / "kd", "ce_student": paths["students"] / "ce"}
    systems = dict(teacher)
    if "tfidf" not in systems:
        from polydistill.model.tfidf import load_model

        systems["tfidf"] = load_model(paths["tfidf"] / lang).probabilities(texts)
    for name, directory in students.items():
        systems[name] = probabilities_from_model(directory, texts, settings.max_length, settings.batch_size,
                                                 settings.threads, runtime)
    quality = {name: classification_metrics(gold, probabilities, labels, settings.bootstrap_samples,
                                            settings.confidence, settings.ece_bins, settings.seed)
               for name, probabilities in systems.items()}
    paired = {name: paired_bootstrap_difference(gold, systems["kd_student"], systems[baseline],
                                                settings.bootstrap_samples, settings.confidence, settings.seed)
              for name, baseline in (("retention", "teacher"), ("kd_gain", "ce_student"))}
    as_trained = probabilities_from_model(students["kd_student"], texts, settings.max_length, settings.batch_size,
                                          settings.threads)
    result = {"lang": lang, "test_rows": len(test), "runtime": runtime, "systems": quality, "paired": paired,
              "runtime_agreement": runtime_agreement(systems["kd_student"], as_trained),
              "segmentation": student_segmentation(paths["teacher"], students["kd_student"], texts),
              "errors": error_analysis(texts, gold, systems["kd_student"], systems["teacher"], labels,
                                       settings.errors)}
    return result, systems


def runtime_agreement(served: np.ndarray, as_trained: np.ndarray) -> dict[str, float]:
    """How the student as served differs from the student as trained (fp32) on the same texts."""
    return {"argmax_agreement": float((served.argmax(axis=1) == as_trained.argmax(axis=1)).mean()),
            "max_abs_probability_difference": float(np.abs(served - as_trained).max())}


@functools.lru_cache(maxsize=1)  # shared mode: one teacher for every language, loaded (and exported) once
def teacher_classifiers(teacher_dir: Path, runtime: str, max_length: int, threads: int) -> dict[str, TextClassifier]:
    """The teacher as trained (PyTorch fp32) and, when that differs, in the serving runtime."""
    classifiers = {"teacher": load_text_classifier(teacher_dir, "torch_fp32", max_length)}
    if runtime != "torch_fp32":
        classifiers["teacher_in_runtime"] = load_text_classifier(teacher_dir, runtime, max_length, threads)
    return classifiers


def measure_efficiency(teacher_dir: Path, student_dir: Path, texts: list[str], settings: EvaluateSettings,
                       runtime: str) -> dict[str, Any]:
    """Sizes, and CPU speed measured interleaved: the teacher as trained (PyTorch fp32), the teacher in the
    serving runtime (when that differs) and the KD student as served; with paired speed-ups over the teacher."""
    max_length, threads = settings.max_length, settings.threads
    classifiers = {**teacher_classifiers(teacher_dir, runtime, max_length, threads),
                   "kd_student": load_text_classifier(student_dir, runtime, max_length, threads)}
    speeds = measure_speeds(classifiers, texts, settings.speed)
    teacher_size = model_size(teacher_dir)
    sizes = {"teacher": teacher_size, "teacher_in_runtime": teacher_size, "kd_student": model_size(student_dir)}
    efficiency = {name: {**sizes[name], **speed, "runtime": "torch_fp32" if name == "teacher" else runtime}
                  for name, speed in speeds.items()}
    efficiency["speedup"] = {"over_teacher_as_trained": paired_speedup(speeds["kd_student"], speeds["teacher"])}
    if "teacher_in_runtime" in speeds:
        efficiency["speedup"]["over_teacher_in_runtime"] = paired_speedup(speeds["kd_student"],
                                                                          speeds["teacher_in_runtime"])
    return efficiency


def summary_row(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one language, as in the Markdown table and the flat metrics."""
    systems, efficiency = result["systems"], result["efficiency"]
    teacher, student = efficiency["teacher"], efficiency["kd_student"]
    speedup = efficiency["speedup"]["over_teacher_as_trained"]
    return {
        "lang": result["lang"],
        "teacher_macro_f1": systems["teacher"]["macro_f1"],
        "teacher_transformer_macro_f1": systems["teacher_transformer"]["macro_f1"],
        "kd_macro_f1": systems["kd_student"]["macro_f1"],
        "ce_macro_f1": systems["ce_student"]["macro_f1"],
        "tfidf_macro_f1": systems["tfidf"]["macro_f1"],
        "retention": result["paired"]["retention"]["ratio"],
        "kd_gain": result["paired"]["kd_gain"]["difference"],
        "segmented_as_teacher": result["segmentation"]["identical_share"],
        "extra_tokens": result["segmentation"]["extra_tokens"],
        "student_params": student["total_params"],
        "teacher_params": teacher["total_params"],
        "compression": teacher["total_params"] / student["total_params"],
        "student_throughput": student["throughput_texts_per_s"],
        "teacher_throughput": teacher["throughput_texts_per_s"],
        "speedup": speedup["throughput_ratio"],
        "student_latency_ms": student["latency_ms_median"],
        "teacher_latency_ms": teacher["latency_ms_median"],
        "latency_speedup": speedup["latency_ratio"],
        "runtime_argmax_agreement": result["runtime_agreement"]["argmax_agreement"],
    }


def language_paths(paths: dict[str, Path], lang: str, mode: str) -> dict[str, Path]:
    """Where one language's students, and in independent mode its own teacher and soft labels, live."""
    students = paths["students"] / lang
    if mode == "independent":
        return {**paths, "students": students, "teacher": students / "teacher", "soft_labels": students / "soft_labels"}
    return {**paths, "students": students}


def finish_evaluation(qualities: list[LanguageQuality], paths: dict[str, Path], settings: EvaluateSettings,
                      labels: list[str], mode: str, runtime: str) -> list[dict[str, Any]]:
    """Measure each language's speed (serially, in this process), then write metrics/<lang>.json, the plots and the
    Markdown summary; returns the summary rows."""
    import torch

    torch.set_num_threads(settings.threads)
    test = pd.read_parquet(paths["test"])
    paths["plots"].mkdir(parents=True, exist_ok=True)
    rows, bars, intervals, error_sections = [], {}, {}, []
    with Progress("evaluation", len(qualities), unit="language") as shown:
        for done, quality in enumerate(qualities, start=1):
            result, lang = quality.result, quality.result["lang"]
            lang_paths = language_paths(paths, lang, mode)
            texts = test.loc[test["lang"] == lang, "text"].tolist()
            result["efficiency"] = measure_efficiency(lang_paths["teacher"], lang_paths["students"] / "kd", texts,
                                                      settings, runtime)
            result["summary"] = summary_row(result)
            write_json(paths["metrics"] / f"{lang}.json", result)
            rows.append(result["summary"])
            error_sections.append(error_analysis_markdown(lang, result["errors"]))
            bars[lang] = {name: entry["macro_f1"] for name, entry in result["systems"].items()}
            intervals[lang] = {name: (entry["macro_f1_ci_low"], entry["macro_f1_ci_high"])
                               for name, entry in result["systems"].items()}
            write_confusion_plots(result, paths["plots"], labels)
            write_confusion_csv(quality.gold, quality.kd_predictions, labels, paths["plots"] / f"confusion_{lang}.csv")
            shown.update(done, {f"kd_f1_{lang}": result["summary"]["kd_macro_f1"]})
    plot_grouped_bars(bars, intervals, paths["plots"] / "macro_f1.png")
    write_bars_csv(bars, intervals, paths["plots"] / "macro_f1.csv")
    paths["summary"].parent.mkdir(parents=True, exist_ok=True)
    paths["summary"].write_text(markdown_summary(rows, SUMMARY_COLUMNS) + "\n\n## Error analysis\n\n"
                                + "\n".join(error_sections), encoding="utf-8")
    return rows


def write_confusion_plots(result: dict[str, Any], plot_dir: Path, labels: list[str]) -> None:
    """A PNG of every system's confusion matrix for the language."""
    matrices = {name: entry["confusion_matrix"] for name, entry in result["systems"].items()}
    plot_confusion_matrices(matrices, labels, f"{result['lang']}: confusion matrices (rows = true)",
                            plot_dir / f"confusion_{result['lang']}.png")


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
