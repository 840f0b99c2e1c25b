"""Benchmark 9: adaptive distillation: alpha and temperature per language, chosen on validation over seeds.

For each language and each (alpha, T) of a small grid, the default student is distilled with several seeds (the
CE-only student does not read alpha or T, so it is trained once per seed). The choice per language is the grid point
with the best validation macro-F1 averaged over seeds (ties: the shared default, then the grid order); test is
reported beside it and never read by the choice. The chosen values go to params.yaml `distill.per_language` by hand,
so the default run trains each student once. Languages can be searched one run at a time (`--languages`): the stored
results of the other languages are kept when they were measured with the same grid, seeds and epochs.
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

from bench.common import REPO_ROOT, RESULTS_DIR, load_project_params, require
from bench.seeds import gold_codes, pipeline_paths
from polydistill.model.distill import DistillSettings, distill_language
from polydistill.model.runtime import probabilities_from_model
from polydistill.model.soft_labels import SoftLabelSettings

GRID = ((0.7, 2.0), (0.5, 2.0), (0.9, 2.0), (0.7, 4.0))  # (alpha, temperature); the first: params.yaml's
SIZES = {"quick": {"seeds": 2, "languages": ["es"], "epochs": 1, "grid": GRID[:2]},
         "full": {"seeds": 3, "languages": None, "epochs": None, "grid": GRID}}

Point = tuple[float, float]


def choose(validation: dict[Point, list[float]], default: Point) -> Point:
    """The grid point with the highest mean validation score over seeds; ties go to `default`, then grid order."""
    means = {point: statistics.mean(scores) for point, scores in validation.items()}
    best = max(means.values())
    winners = [point for point, mean in means.items() if mean == best]
    return default if default in winners else winners[0]


def macro_f1(probabilities: np.ndarray, gold: np.ndarray) -> float:
    return float(f1_score(gold, probabilities.argmax(axis=1), average="macro"))


def adaptive_choice(predictions: dict[Point, list[dict[str, np.ndarray]]], gold: dict[str, np.ndarray],
                    default: Point) -> dict[str, Any]:
    """From each grid point's per-seed probabilities on validation and test: scores, and the validation choice."""
    scores = {split: {point: [macro_f1(seed[split], gold[split]) for seed in seeds]
                      for point, seeds in predictions.items()} for split in ("validation", "test")}
    return {"scores": scores, "chosen": choose(scores["validation"], default)}


def held_out_splits(lang: str, labels: list[str]) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """One language's validation and test rows of the default run, and their gold label ids."""
    splits = {}
    for split in ("validation", "test"):
        frame = pd.read_parquet(require(REPO_ROOT / f"data/prepared/{split}.parquet", "make run"))
        splits[split] = frame[frame["lang"] == lang].reset_index(drop=True)
    gold = {split: gold_codes(frame, labels) for split, frame in splits.items()}
    return splits, gold


def seed_predictions(lang: str, point: Point, seed: int, params: dict[str, Any], sizes: dict[str, Any],
                     splits: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Distil one language at one grid point and seed; the KD student's probabilities on validation and test."""
    settings = copy.deepcopy(params["distill"])
    settings.update(alpha=point[0], temperature=point[1], per_language={})
    settings["train"]["seed"] = seed
    if sizes["epochs"]:
        settings["train"]["epochs"] = sizes["epochs"]
    name = f"alpha{point[0]}-t{point[1]}"
    paths = pipeline_paths(lang, REPO_ROOT / ".cache/bench/adaptive" / name / str(seed))
    distill_language(lang, paths, DistillSettings.from_params(settings),
                     SoftLabelSettings.from_params(params["soft_labels"]), params["data"]["labels"])
    runtime = params["registry"]["router"]["runtime"]
    return {split: probabilities_from_model(paths["output"] / "kd", frame["text"].tolist(),
                                            settings["train"]["max_length"], settings["train"]["eval_batch_size"],
                                            settings["threads"], runtime)
            for split, frame in splits.items()}


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = {**SIZES["quick" if quick else "full"], **({"languages": languages} if languages else {})}
    params = load_project_params()
    labels, languages = params["data"]["labels"], sizes["languages"] or params["data"]["languages"]
    default = (params["distill"]["alpha"], params["distill"]["temperature"])
    base_seed = params["distill"]["train"]["seed"]
    results = {}
    for lang in languages:
        splits, gold = held_out_splits(lang, labels)
        predictions = {point: [seed_predictions(lang, point, seed, params, sizes, splits)
                               for seed in range(base_seed, base_seed + sizes["seeds"])]
                       for point in sorted(sizes["grid"], key=lambda point: point == default)}  # default last
        results[lang] = adaptive_choice(predictions, gold, default)
    results = {**stored_results(sizes), **results}
    order = params["data"]["languages"]
    results = dict(sorted(results.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    return summarise(results, default, {**sizes, "languages": list(results)})


def stored_results(sizes: dict[str, Any], path: Path = RESULTS_DIR / "adaptive.json") -> dict[str, dict[str, Any]]:
    """Per-language results of an earlier run of this benchmark measured with the same grid, seeds and epochs."""
    if not path.exists():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    same = all(stored["config"][name] == [list(point) for point in sizes["grid"]] if name == "grid"
               else stored["config"][name] == sizes[name] for name in ("grid", "seeds", "epochs"))
    if not same:
        return {}
    return {lang: {"chosen": tuple(result["chosen"]),
                   "scores": {split: {tuple(float(value) for value in point.split(",")): values
                                      for point, values in by_point.items()}
                              for split, by_point in result["scores"].items()}}
            for lang, result in stored["results"].items()}


def summarise(results: dict[str, dict[str, Any]], default: Point, sizes: dict[str, Any]) -> dict[str, Any]:
    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else \
            f"{values[0]:.3f}"

    grid_rows, choice_rows = [], []
    for lang, result in results.items():
        scores = result["scores"]
        for point in scores["validation"]:
            grid_rows.append([lang, f"{point[0]:g}", f"{point[1]:g}", cell(scores["validation"][point]),
                              cell(scores["test"][point]), "chosen" if point == result["chosen"] else ""])
        chosen = result["chosen"]
        differences = [a - b for a, b in zip(scores["test"][chosen], scores["test"][default], strict=True)]
        validation_gain = statistics.mean(scores["validation"][chosen]) - statistics.mean(scores["validation"][default])
        choice_rows.append([lang, f"α {chosen[0]:g}, T {chosen[1]:g}", f"{validation_gain:+.3f}",
                            f"{statistics.mean(scores['test'][default]):.3f}",
                            f"{statistics.mean(scores['test'][chosen]):.3f}",
                            f"{statistics.mean(differences):+.3f} ({min(differences):+.3f} to "
                            f"{max(differences):+.3f})"])
    per_language = {lang: {"alpha": result["chosen"][0], "temperature": result["chosen"][1]}
                    for lang, result in results.items() if result["chosen"] != default}
    serialisable = {lang: {"chosen": list(result["chosen"]),
                           "scores": {split: {f"{p[0]:g},{p[1]:g}": values for p, values in by_point.items()}
                                      for split, by_point in result["scores"].items()}}
                    for lang, result in results.items()}
    return {
        "name": "adaptive", "title": "9. Adaptive distillation: alpha and T per language", "config": sizes,
        "results": serialisable, "per_language": per_language,
        "tables": [
            {"title": f"KD student macro-F1 per grid point, mean ± sd over {sizes['seeds']} seeds (as served); the "
                      "choice reads validation only",
             "columns": ["lang", "alpha", "T", "validation", "test", ""], "rows": grid_rows},
            {"title": f"Fixed (α {default[0]:g}, T {default[1]:g}) vs the chosen values per language: validation "
                      "gain that chose them, test of both and the paired per-seed test difference (min to max)",
             "columns": ["lang", "chosen", "validation gain", "test fixed", "test chosen", "test chosen − fixed"],
             "rows": choice_rows},
        ],
        "notes": [f"params.yaml distill.per_language for these choices: {per_language or '{}'}",
                  "A validation gain smaller than the seed sd is noise: keeping the fixed values is as good."],
    }
