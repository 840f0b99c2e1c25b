"""The TF-IDF baseline's cross-validated score: it measures signal, not the labels' names."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tiny_models import TINY_TFIDF_SETTINGS

from polydistill.data.folds import fold_of
from polydistill.model.tfidf import (
    TfidfSettings,
    cross_fitted_probabilities,
    cross_validated_macro_f1,
    fit_baselines,
    fit_fixed,
    load_model,
)

LABELS = ["negative", "positive"]
WORDS = {0: ["awful", "dull", "boring", "terrible", "weak"], 1: ["great", "superb", "lovely", "brilliant", "fine"]}
SETTINGS = replace(TINY_TFIDF_SETTINGS, cv_folds=4)


def sentiment_texts(rows: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Short texts whose label is carried by one sentiment word among neutral filler."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    filler = ["the film", "this plot", "our hotel", "that meal", "the phone"]
    texts = [f"{filler[rng.integers(5)]} was {WORDS[label][rng.integers(5)]} today" for label in labels]
    return texts, labels


def test_cross_validation_scores_signal_high_and_shuffled_labels_near_chance() -> None:
    texts, labels = sentiment_texts(160, seed=1)
    signal, _ = cross_validated_macro_f1(texts, labels, SETTINGS, c=4.0)
    shuffled, _ = cross_validated_macro_f1(texts, np.random.default_rng(2).permutation(labels), SETTINGS, c=4.0)
    assert signal > 0.95
    assert shuffled < 0.7


def test_baseline_metrics_report_the_cross_validated_score(tmp_path: Path) -> None:
    texts, labels = sentiment_texts(120, seed=3)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(120)], "text": texts, "lang": "en",
                          "label": [LABELS[label] for label in labels]})
    frame.iloc[:90].to_parquet(tmp_path / "train.parquet")
    frame.iloc[90:].to_parquet(tmp_path / "validation.parquet")
    fit_baselines(tmp_path / "train.parquet", tmp_path / "validation.parquet", tmp_path / "tfidf",
                  tmp_path / "baseline.json", LABELS, SETTINGS)
    metrics = json.loads((tmp_path / "baseline.json").read_text(encoding="utf-8"))["en"]
    assert metrics["train_cv_macro_f1"] > 0.95
    assert 0 <= metrics["train_cv_macro_f1_std"] < 0.1


def test_transfer_rows_are_scored_out_of_fold(tmp_path: Path) -> None:
    texts, labels = sentiment_texts(120, seed=5)
    train = pd.DataFrame({"id": [f"r{i}" for i in range(120)], "text": texts, "lang": "en",
                          "label": [LABELS[label] for label in labels]})
    train.iloc[:100].to_parquet(tmp_path / "train.parquet")
    train.iloc[100:].to_parquet(tmp_path / "validation.parquet")
    fit_baselines(tmp_path / "train.parquet", tmp_path / "validation.parquet", tmp_path / "tfidf",
                  tmp_path / "metrics.json", LABELS, SETTINGS)
    fitted = train.iloc[:100].reset_index(drop=True)
    rows = pd.concat([fitted.assign(origin_id=fitted["id"]),  # labelled rows
                      pd.DataFrame({"id": ["u1"], "text": ["the meal was lovely"], "origin_id": [None]})],
                     ignore_index=True)
    scored = cross_fitted_probabilities(tmp_path / "tfidf/en", fitted, LABELS, rows, folds=3)

    row = 7
    fold = fold_of(fitted["id"][row], 3)
    others = fitted["id"].map(lambda row_id: fold_of(row_id, 3)) != fold
    config = json.loads((tmp_path / "tfidf/en/config.json").read_text(encoding="utf-8"))
    fold_model = fit_fixed(fitted["text"][others].tolist(), labels[:100][others.to_numpy()],
                           TfidfSettings.from_params(config["settings"]), config["C"])
    np.testing.assert_allclose(scored[row], fold_model.probabilities([fitted["text"][row]])[0], rtol=1e-6)
    np.testing.assert_allclose(scored[-1], load_model(tmp_path / "tfidf/en").probabilities(["the meal was lovely"])[0],
                               rtol=1e-6)  # a text outside the train split: the full model

    flipped = fitted.copy()
    flipped.loc[row, "label"] = LABELS[1 - labels[row]]
    again = cross_fitted_probabilities(tmp_path / "tfidf/en", flipped, LABELS, rows, folds=3)
    np.testing.assert_array_equal(again[row], scored[row])  # its own label never reaches its score


def test_folds_depend_on_the_id_alone() -> None:
    folds = [fold_of(f"row-{i}", 5) for i in range(1000)]
    assert folds == [fold_of(f"row-{i}", 5) for i in range(1000)]
    assert set(folds) == set(range(5)) and min(np.bincount(folds)) > 150
