"""Soft labels: batched teacher logits with an ensemble, and refusals of a wrong teacher, label order or row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fixture_texts
from tiny_models import TINY_TFIDF_SETTINGS, tiny_pretrained_encoder

from polydistill.soft_labels import (
    SoftLabelMismatch,
    choose_weight,
    generate_soft_labels,
    load_soft_labels,
    mix,
    teacher_fingerprint,
)
from polydistill.tfidf import fit_baselines

LABELS = ["negative", "positive"]
SETTINGS = {"max_length": 32, "batch_size": 8, "threads": 1, "weight_grid": [0.0, 0.5, 1.0]}


def frame(rows: int, offset: int) -> pd.DataFrame:
    texts = fixture_texts()[offset:offset + rows]
    return pd.DataFrame({"id": [f"row-{offset + i}" for i in range(rows)], "text": texts,
                         "label": [LABELS[i % 2] for i in range(rows)],
                         "lang": ["en" if i % 3 else "zh" for i in range(rows)], "source": "fixture"})


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("soft")
    teacher = tiny_pretrained_encoder(root / "teacher", fixture_texts(), LABELS)
    splits = {"transfer": frame(40, 0), "validation": frame(30, 40), "test": frame(30, 70)}
    splits["transfer"] = pd.concat([splits["transfer"], splits["transfer"].iloc[:5]], ignore_index=True)  # repeats
    for name, split in splits.items():
        split.to_parquet(root / f"{name}.parquet")
    fit_baselines(root / "transfer.parquet", root / "validation.parquet", root / "tfidf", root / "tfidf.json",
                  LABELS, TINY_TFIDF_SETTINGS)
    report = generate_soft_labels(teacher, root / "tfidf", splits, root / "soft", SETTINGS, LABELS)
    return {"root": root, "teacher": teacher, "splits": splits, "report": report}


def test_logits_are_stored_per_row_with_ensemble_weights(generated: dict) -> None:
    expected = teacher_fingerprint(generated["teacher"], LABELS, SETTINGS["max_length"], None, None)
    transfer = generated["splits"]["transfer"]
    logits = load_soft_labels(generated["root"] / "soft", "transfer", transfer, expected)
    assert logits.shape == (45, 2)
    np.testing.assert_array_equal(logits[40:], logits[:5])  # a repeated row carries the same teacher output
    assert set(generated["report"]["ensemble"]["weights"]) == {"en", "zh"}
    assert generated["report"]["unique_texts_scored"] == 100
    english = (transfer["lang"] == "en").to_numpy()
    soft = generated["root"] / "soft"
    transformer = load_soft_labels(soft, "transfer", transfer, expected, "transformer_logits")[english]
    tfidf = np.exp(load_soft_labels(soft, "transfer", transfer, expected, "tfidf_log_probs")[english])
    weight = generated["report"]["ensemble"]["weights"]["en"]
    np.testing.assert_allclose(logits[english], mix(transformer, tfidf, weight), atol=1e-5)


def test_weight_minimises_validation_log_loss_not_accuracy() -> None:
    labels = np.array([0, 0, 1, 1])
    # The transformer is right on every text but barely; TF-IDF is confidently right on three and wrong on one.
    transformer = np.log(np.array([[0.55, 0.45], [0.55, 0.45], [0.45, 0.55], [0.45, 0.55]]))
    tfidf = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.99, 0.01]])
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    weight, loss = choose_weight(labels, transformer, tfidf, grid)
    losses = {w: -mix(transformer, tfidf, w)[np.arange(4), labels].mean() for w in grid}
    assert loss == pytest.approx(min(losses.values()), abs=1e-6)
    assert weight == min(losses, key=losses.get)
    assert 0.0 < weight < 1.0  # neither member alone: the mix is better calibrated than both
    tied = np.zeros((4, 2))
    assert choose_weight(labels, tied, np.full((4, 2), 0.5), grid)[0] == 1.0  # ties go to the transformer


def test_a_different_teacher_is_refused(generated: dict, tmp_path: Path) -> None:
    other = tiny_pretrained_encoder(tmp_path / "other", fixture_texts(), LABELS, seed=1)
    expected = teacher_fingerprint(other, LABELS, SETTINGS["max_length"], None, None)
    with pytest.raises(SoftLabelMismatch, match="teacher_weights_sha256"):
        load_soft_labels(generated["root"] / "soft", "validation", generated["splits"]["validation"], expected)


def test_reordered_labels_are_refused(generated: dict) -> None:
    expected = teacher_fingerprint(generated["teacher"], LABELS[::-1], SETTINGS["max_length"], None, None)
    with pytest.raises(SoftLabelMismatch, match="labels"):
        load_soft_labels(generated["root"] / "soft", "validation", generated["splits"]["validation"], expected)


def test_another_max_length_is_refused(generated: dict) -> None:
    expected = teacher_fingerprint(generated["teacher"], LABELS, 128, None, None)
    with pytest.raises(SoftLabelMismatch, match="max_length"):
        load_soft_labels(generated["root"] / "soft", "test", generated["splits"]["test"], expected)


def test_shuffled_rows_are_refused(generated: dict) -> None:
    expected = teacher_fingerprint(generated["teacher"], LABELS, SETTINGS["max_length"], None, None)
    shuffled = generated["splits"]["test"].sample(frac=1.0, random_state=3)
    with pytest.raises(SoftLabelMismatch, match="not aligned"):
        load_soft_labels(generated["root"] / "soft", "test", shuffled, expected)
