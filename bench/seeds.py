"""Benchmark 7: the default students over several seeds: mean ± sd of test macro-F1, paired KD − CE per seed.

Seeds vary the students (sampling order, dropout; from_teacher students copy every weight, so nothing else is
random); the teacher, its soft labels and the TF-IDF model are the default run's and stay fixed (one teacher run
takes ~8 min and its soft labels ~4 min more on 2 cores: a teacher seed would double this benchmark). The default
seed's students are found finished in .cache/runs (same checkpoint key), so it costs nothing to include.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from bench.common import QUALITY_TARGETS, REPO_ROOT, load_project_params, require, target
from polydistill.model.distill import DistillSettings, distill_language
from polydistill.model.runtime import probabilities_from_model
from polydistill.model.soft_labels import SoftLabelSettings

SIZES = {"quick": {"seeds": 2, "languages": ["es"], "epochs": 1}, "full": {"seeds": 3, "languages": None,
                                                                           "epochs": None}}


def pipeline_paths(lang: str, output: Path) -> dict[str, Path]:
    """The default run's inputs for one language's students, with outputs under `output`."""
    data = REPO_ROOT / "data"
    return {"teacher": REPO_ROOT / "models/teacher", "fold_teachers": REPO_ROOT / "models/fold_teachers",
            "tfidf": REPO_ROOT / "models/tfidf",
            "soft_labels": require(data / "soft_labels", "make run"), "transfer": data / "transfer/transfer.parquet",
            "labelled_transfer": data / "transfer/labelled.parquet", "pool": data / "transfer/pool.parquet",
            "word_frequencies": data / "word_frequencies",
            "teacher_set": data / "balanced/teacher.parquet", "train": data / "prepared/train.parquet",
            "validation": data / "prepared/validation.parquet", "test": data / "prepared/test.parquet",
            "output": output / lang, "metrics": output / f"{lang}.json", "work": REPO_ROOT / ".cache/runs"}


def gold_codes(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The rows' gold label indices, in params.yaml's label order."""
    return frame["label"].map({label: index for index, label in enumerate(labels)}).to_numpy()


def predictions(model_dir: Path, frame: pd.DataFrame, settings: dict[str, Any],
                runtime: str = "torch_fp32") -> np.ndarray:
    """A student folder's predicted label index per row, in a runtime (settings: params.yaml's distill section)."""
    return probabilities_from_model(model_dir, frame["text"].tolist(), settings["train"]["max_length"],
                                    settings["train"]["eval_batch_size"], settings["threads"], runtime).argmax(axis=1)


def macro_f1(model_dir: Path, test: pd.DataFrame, labels: list[str], settings: dict[str, Any],
             runtime: str = "torch_fp32") -> float:
    """Test macro-F1 of a student folder in a runtime."""
    return float(f1_score(gold_codes(test, labels), predictions(model_dir, test, settings, runtime), average="macro"))


def reference_scores(lang: str) -> dict[str, float]:
    """The fixed systems' test macro-F1 from the evaluate stage: ensemble teacher, transformer, TF-IDF."""
    evaluation = json.loads(require(REPO_ROOT / f"metrics/evaluate/{lang}.json", "make run").read_text())
    systems = evaluation["systems"]
    return {"teacher": systems["teacher"]["macro_f1"], "transformer": systems["teacher_transformer"]["macro_f1"],
            "tfidf": systems["tfidf"]["macro_f1"], "segmentation": evaluation["segmentation"]["identical_share"]}


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    """languages: a subset to run (default: the mode's languages)."""
    sizes = {**SIZES["quick" if quick else "full"], **({"languages": languages} if languages else {})}
    params = load_project_params()
    labels, languages = params["data"]["labels"], sizes["languages"] or params["data"]["languages"]
    base_seed = params["distill"]["train"]["seed"]
    seeds = [base_seed + offset for offset in range(sizes["seeds"])]
    test_all = pd.read_parquet(REPO_ROOT / "data/prepared/test.parquet")
    scores: dict[str, dict[str, list[float]]] = {}
    for lang in languages:
        test = test_all[test_all["lang"] == lang].reset_index(drop=True)
        scores[lang] = {"kd": [], "ce": []}
        for seed in seeds:
            settings = copy.deepcopy(params["distill"])
            settings["train"]["seed"] = seed
            if sizes["epochs"]:
                settings["train"]["epochs"] = sizes["epochs"]
            output = REPO_ROOT / ".cache/bench/seeds" / ("quick" if quick else "full") / str(seed)
            paths = pipeline_paths(lang, output)
            distill_language(lang, paths, DistillSettings.from_params(settings),
                             SoftLabelSettings.from_params(params["soft_labels"]), labels)
            for variant in ("kd", "ce"):
                scores[lang][variant].append(macro_f1(paths["output"] / variant, test, labels, settings,
                                                      params["registry"]["router"]["runtime"]))
    return summarise(scores, seeds, languages)


def summarise(scores: dict[str, dict[str, list[float]]], seeds: list[int], languages: list[str]) -> dict[str, Any]:
    """The table (seed means, paired differences) and the issue's targets judged on the seed means."""
    rows, kd_means, tfidf_scores, retentions, gains = [], {}, {}, {}, {}
    for lang in languages:
        kd, ce = scores[lang]["kd"], scores[lang]["ce"]
        reference = reference_scores(lang)
        differences = [a - b for a, b in zip(kd, ce, strict=True)]
        kd_means[lang], tfidf_scores[lang] = statistics.mean(kd), reference["tfidf"]
        retentions[lang] = kd_means[lang] / reference["teacher"]
        gains[lang] = statistics.mean(differences)
        rows.append([lang, f"{reference['teacher']:.3f}", f"{reference['transformer']:.3f}", mean_sd(kd),
                     mean_sd(ce), f"{reference['tfidf']:.3f}", f"{kd_means[lang] - reference['tfidf']:+.3f}",
                     f"{retentions[lang]:.1%}", f"{gains[lang]:+.3f} (min {min(differences):+.3f})",
                     f"{reference['segmentation']:.0%}", " ".join(f"{value:.3f}" for value in kd)])
    mean_kd, mean_tfidf = statistics.mean(kd_means.values()), statistics.mean(tfidf_scores.values())
    worst = min(retentions, key=retentions.get)
    segmentation = {lang: reference_scores(lang)["segmentation"] for lang in languages}
    below_tfidf = [lang for lang in languages if kd_means[lang] < tfidf_scores[lang]]
    return {
        "name": "seeds", "title": "7. Students over seeds (the default configuration)", "seeds": seeds,
        "scores": scores,
        "tables": [{"title": f"Test macro-F1 over seeds {seeds}, students as served (registry.router.runtime; "
                             "students vary, teacher and TF-IDF fixed). KD − CE is the mean of per-seed paired "
                             "differences (same seed, same test rows).",
                    "columns": ["lang", "teacher", "transformer", "KD mean ± sd", "CE-only mean ± sd", "TF-IDF",
                                "KD − TF-IDF", "retention", "KD − CE", "segmented as teacher", "KD per seed"],
                    "rows": rows + [["mean", "", "", f"{mean_kd:.3f}", "", f"{mean_tfidf:.3f}",
                                     f"{mean_kd - mean_tfidf:+.3f}", "", f"{statistics.mean(gains.values()):+.3f}",
                                     "", ""]]}],
        "targets": [
            target(f"languages where the KD seed mean is below TF-IDF ({', '.join(below_tfidf) or 'none'})",
                   len(below_tfidf), 0, higher_is_better=False),
            target("KD seed mean − TF-IDF, mean over languages", mean_kd - mean_tfidf,
                   QUALITY_TARGETS["kd_over_tfidf_mean"]),
            target(f"retention of the seed mean, worst language ({worst})", retentions[worst],
                   QUALITY_TARGETS["worst_retention"]),
            target("KD − CE-only, mean over languages of the per-seed mean", statistics.mean(gains.values()),
                   QUALITY_TARGETS["kd_over_ce_mean"]),
            target("KD − CE-only, worst language", min(gains.values()), 0.0),
            target("test texts segmented as the teacher does, worst language", min(segmentation.values()),
                   QUALITY_TARGETS["segmentation"]),
        ],
        "notes": [f"KD per-seed scores: {json.dumps({lang: scores[lang]['kd'] for lang in languages})}",
                  f"CE per-seed scores: {json.dumps({lang: scores[lang]['ce'] for lang in languages})}",
                  "sd is the sample standard deviation over seeds; with 3 seeds it is itself rough."],
    }
