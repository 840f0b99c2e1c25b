"""The TF-IDF + logistic regression baseline: one model per language, trained on that language's whole train split.

It is the bar the teacher must clear, a member of the teacher ensemble, and a row of the evaluation. Models are
stored as JSON (vocabulary, settings) plus safetensors (idf, coefficients), never as pickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from polydistill.data.folds import fold_of
from polydistill.progress import Progress


@dataclass(frozen=True)
class TfidfSettings:
    """The baseline section of params.yaml; fields in its order, as saved in each model's config.json."""

    analyzer: str
    ngram_range: tuple[int, int]
    min_df: int | float           # documents a term must occur in (a float: a share of them)
    max_features: int | None
    c_grid: tuple[float, ...]     # C values tried, the best by validation macro-F1 kept
    max_iter: int
    cv_folds: int                 # stratified folds of the train split for the cross-validated macro-F1
    seed: int

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> TfidfSettings:
        return cls(**{**section, "ngram_range": tuple(section["ngram_range"]), "c_grid": tuple(section["c_grid"])})


@dataclass
class TfidfModel:
    """A fitted vectorizer and classifier for one language."""

    vectorizer: TfidfVectorizer
    classifier: LogisticRegression

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """Class probabilities [N, K] in label-id order."""
        return self.classifier.predict_proba(self.vectorizer.transform(texts))


def make_vectorizer(settings: TfidfSettings, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(analyzer=settings.analyzer, ngram_range=settings.ngram_range, min_df=settings.min_df,
                           max_features=settings.max_features, sublinear_tf=True, lowercase=True,
                           vocabulary=vocabulary, dtype=np.float32)


def make_classifier(settings: TfidfSettings, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=settings.max_iter, random_state=settings.seed)


def cross_validated_macro_f1(texts: list[str], labels: np.ndarray, settings: TfidfSettings,
                             c: float) -> tuple[float, float]:
    """Mean and standard deviation of macro-F1 over settings.cv_folds stratified folds of the train split.

    The vectorizer is refitted inside each fold. This is how much the baseline's score moves with the draw of
    held-out text, which the one small test split of a small language cannot show.
    """
    folds = StratifiedKFold(n_splits=settings.cv_folds, shuffle=True, random_state=settings.seed)
    scores = cross_val_score(make_pipeline(make_vectorizer(settings), make_classifier(settings, c)),
                             np.asarray(texts, dtype=object), labels, cv=folds, scoring="f1_macro")
    return float(scores.mean()), float(scores.std())


def fit_language(train_texts: list[str], train_labels: np.ndarray, validation_texts: list[str],
                 validation_labels: np.ndarray, settings: TfidfSettings) -> tuple[TfidfModel, float, float]:
    """Fit on train, pick C from settings.c_grid by validation macro-F1; returns model, C and its score."""
    vectorizer = make_vectorizer(settings)
    train_matrix = vectorizer.fit_transform(train_texts)
    validation_matrix = vectorizer.transform(validation_texts)
    best: tuple[float, float, LogisticRegression] | None = None
    for c in settings.c_grid:
        classifier = make_classifier(settings, c)
        classifier.fit(train_matrix, train_labels)
        score = f1_score(validation_labels, classifier.predict(validation_matrix), average="macro")
        if best is None or score > best[0]:
            best = (score, c, classifier)
    score, c, classifier = best
    return TfidfModel(vectorizer, classifier), c, float(score)


def fit_fixed(texts: list[str], labels: np.ndarray, settings: TfidfSettings, c: float) -> TfidfModel:
    """A model fitted on texts with the given settings and C (no selection)."""
    vectorizer = make_vectorizer(settings)
    matrix = vectorizer.fit_transform(texts)
    return TfidfModel(vectorizer, make_classifier(settings, c).fit(matrix, labels))


def cross_fitted_probabilities(model_dir: Path, train: pd.DataFrame, labels: list[str], rows: pd.DataFrame,
                               folds: int) -> np.ndarray:
    """Probabilities for `rows` (columns text, origin_id) that never come from a model fitted on the row itself.

    A row whose origin_id is a train id (a labelled row, or text derived from one) is scored by the model fitted on
    the train rows of the other folds; any other row by the full model in model_dir. Folds follow `fold_of`; the
    fold models use the full model's settings and C.
    """
    full = load_model(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    settings = TfidfSettings.from_params(config["settings"])
    probabilities = full.probabilities(rows["text"].tolist())
    train_folds = train["id"].map(lambda row_id: fold_of(row_id, folds)).to_numpy()
    row_folds = {row_id: fold for row_id, fold in zip(train["id"], train_folds)}
    origin_folds = rows["origin_id"].map(row_folds).to_numpy()
    label_ids = {label: index for index, label in enumerate(labels)}
    gold = train["label"].map(label_ids).to_numpy()
    for fold in range(folds):
        scored = origin_folds == fold
        if not scored.any():
            continue
        fitted = train_folds != fold
        model = fit_fixed(train["text"][fitted].tolist(), gold[fitted], settings, config["C"])
        probabilities[scored] = model.probabilities(rows["text"][scored].tolist())
    return probabilities


def save_model(model: TfidfModel, directory: Path, settings: TfidfSettings) -> None:
    """vocabulary.json + settings in config.json + idf and coefficients in weights.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = {term: int(index) for term, index in model.vectorizer.vocabulary_.items()}
    (directory / "vocabulary.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    config = {"settings": asdict(settings), "classes": model.classifier.classes_.tolist(), "C": model.classifier.C}
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({"idf": torch.from_numpy(model.vectorizer.idf_.astype(np.float32)),
               "coef": torch.from_numpy(model.classifier.coef_.astype(np.float64)),
               "intercept": torch.from_numpy(model.classifier.intercept_.astype(np.float64))},
              str(directory / "weights.safetensors"))


def load_model(directory: Path) -> TfidfModel:
    """Rebuild a saved model without unpickling anything."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    vocabulary = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
    weights = load_file(str(directory / "weights.safetensors"))
    vectorizer = make_vectorizer(TfidfSettings.from_params(config["settings"]), vocabulary).fit([""])
    vectorizer.idf_ = weights["idf"].numpy()
    classifier = LogisticRegression(C=config["C"])
    classifier.classes_ = np.array(config["classes"])
    classifier.coef_ = weights["coef"].numpy()
    classifier.intercept_ = weights["intercept"].numpy()
    return TfidfModel(vectorizer, classifier)


def fit_baselines(train_path: Path, validation_path: Path, output_dir: Path, metrics_path: Path,
                  labels: list[str], settings: TfidfSettings) -> dict[str, dict[str, float]]:
    """Fit, select and save one baseline per language; write its validation and cross-validated macro-F1 and C."""
    label_ids = {label: index for index, label in enumerate(labels)}
    train, validation = pd.read_parquet(train_path), pd.read_parquet(validation_path)
    metrics: dict[str, dict[str, float]] = {}
    languages = sorted(train["lang"].unique())
    with Progress("TF-IDF baselines", len(languages), unit="language") as shown:
        for done, lang in enumerate(languages, start=1):
            rows, held_out = train[train["lang"] == lang], validation[validation["lang"] == lang]
            texts, gold = rows["text"].tolist(), rows["label"].map(label_ids).to_numpy()
            model, c, score = fit_language(texts, gold, held_out["text"].tolist(),
                                           held_out["label"].map(label_ids).to_numpy(), settings)
            save_model(model, output_dir / lang, settings)
            cv_mean, cv_std = cross_validated_macro_f1(texts, gold, settings, c)
            metrics[lang] = {"validation_macro_f1": round(score, 5), "C": c,
                             "train_cv_macro_f1": round(cv_mean, 5), "train_cv_macro_f1_std": round(cv_std, 5),
                             "features": len(model.vectorizer.vocabulary_)}
            shown.update(done, {f"val_f1_{lang}": score})
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
