"""The TF-IDF baseline's cross-validated score: it measures signal, not the labels' names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tiny_models import TINY_TFIDF_SETTINGS

from polydistill.tfidf import cross_validated_macro_f1, fit_baselines

LABELS = ["negative", "positive"]
WORDS = {0: ["awful", "dull", "boring", "terrible", "weak"], 1: ["great", "superb", "lovely", "brilliant", "fine"]}
SETTINGS = {**TINY_TFIDF_SETTINGS, "cv_folds": 4}


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
