"""Soft labels: batched teacher logits with an ensemble, and refusals of a wrong teacher, label order or row order."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fixture_texts
from tiny_models import TINY_TFIDF_SETTINGS, tiny_pretrained_encoder

from polydistill.model.soft_labels import (
    FINGERPRINT_FILE,
    SoftLabelMismatch,
    SoftLabelSettings,
    choose_weight,
    fingerprint_id,
    generate_soft_labels,
    language_frames,
    load_soft_labels,
    mix,
    score_language,
    teacher_fingerprint,
)
from polydistill.model.tfidf import fit_baselines

LABELS = ["negative", "positive"]
SETTINGS = SoftLabelSettings(ensemble=True, weight_grid=(0.0, 0.5, 1.0), cross_fit_folds=3, max_length=32,
                             batch_size=8, threads=1, runtime="onnx_fp32")


def frame(rows: int, offset: int) -> pd.DataFrame:
    texts = fixture_texts()[offset:offset + rows]
    return pd.DataFrame({"id": [f"row-{offset + i}" for i in range(rows)], "text": texts,
                         "label": [LABELS[i % 2] for i in range(rows)],
                         "lang": ["en" if i % 3 else "zh" for i in range(rows)], "source": "fixture"})


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("soft")
    teacher = tiny_pretrained_encoder(root / "teacher", fixture_texts(), LABELS)
    train = frame(40, 0)
    splits = {"transfer": train.assign(origin_id=train["id"]), "validation": frame(30, 40), "test": frame(30, 70)}
    splits["transfer"] = pd.concat([splits["transfer"], splits["transfer"].iloc[:5]], ignore_index=True)  # repeats
    for name, split in {**splits, "train": train}.items():
        split.to_parquet(root / f"{name}.parquet")
    fit_baselines(root / "train.parquet", root / "validation.parquet", root / "tfidf", root / "tfidf.json",
                  LABELS, TINY_TFIDF_SETTINGS)
    report = generate_soft_labels(teacher, None, root / "tfidf", splits, train, root / "soft", SETTINGS, LABELS)
    return {"root": root, "teacher": teacher, "splits": splits, "report": report}


def expected_for(generated: dict, **overrides) -> dict:
    arguments = {"teacher_dir": generated["teacher"], "labels": LABELS, "max_length": SETTINGS.max_length,
                 "tfidf_dir": generated["root"] / "tfidf", "fold_teachers_dir": None, **overrides}
    return teacher_fingerprint(**arguments)


def test_logits_are_stored_per_row_with_ensemble_weights(generated: dict) -> None:
    expected = expected_for(generated)
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


def test_a_language_scores_the_same_without_the_other_languages(generated: dict) -> None:
    """Each language is scored on its own (never batched with another's rows), so a worker that scores only zh
    gives the logits the whole stage stored for zh: the fan-out cannot change a bit."""
    root, splits = generated["root"], generated["splits"]
    train = pd.read_parquet(root / "train.parquet")
    alone = score_language(generated["teacher"], None, root / "tfidf", language_frames(splits, "zh"),
                           train[train["lang"] == "zh"], SETTINGS, LABELS)
    zh = (splits["test"]["lang"] == "zh").to_numpy()
    expected = expected_for(generated)
    stored = load_soft_labels(root / "soft", "test", splits["test"], expected, "transformer_logits")[zh]
    np.testing.assert_array_equal(np.stack([alone.transformer[i] for i in splits["test"]["id"][zh]]), stored)
    stored_tfidf = load_soft_labels(root / "soft", "test", splits["test"], expected, "tfidf_log_probs")[zh]
    np.testing.assert_array_equal(np.log(np.clip(np.stack([alone.tfidf[i] for i in splits["test"]["id"][zh]]),
                                                 1e-12, None)).astype(np.float32), stored_tfidf)


def test_onnx_runtime_scores_as_pytorch_does(generated: dict) -> None:
    """The stage scores with ONNX Runtime (fp32); its logits are PyTorch's to float rounding, argmaxes equal."""
    root, splits = generated["root"], generated["splits"]
    train = pd.read_parquet(root / "train.parquet")
    frames = language_frames(splits, "en")
    by_runtime = {runtime: score_language(generated["teacher"], None, None, frames, train[train["lang"] == "en"],
                                          dataclasses.replace(SETTINGS, runtime=runtime), LABELS).transformer
                  for runtime in ("onnx_fp32", "torch_fp32")}
    ids = sorted(by_runtime["torch_fp32"])
    onnx, torch_logits = (np.stack([by_runtime[runtime][i] for i in ids]) for runtime in ("onnx_fp32", "torch_fp32"))
    assert np.abs(onnx - torch_logits).max() < 1e-4
    assert (onnx.argmax(axis=1) == torch_logits.argmax(axis=1)).all()


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
    expected = expected_for(generated, teacher_dir=other)
    with pytest.raises(SoftLabelMismatch, match="teacher_weights_sha256"):
        load_soft_labels(generated["root"] / "soft", "validation", generated["splits"]["validation"], expected)


def test_reordered_labels_are_refused(generated: dict) -> None:
    expected = expected_for(generated, labels=LABELS[::-1])
    with pytest.raises(SoftLabelMismatch, match="labels"):
        load_soft_labels(generated["root"] / "soft", "validation", generated["splits"]["validation"], expected)


def test_another_max_length_is_refused(generated: dict) -> None:
    expected = expected_for(generated, max_length=128)
    with pytest.raises(SoftLabelMismatch, match="max_length"):
        load_soft_labels(generated["root"] / "soft", "test", generated["splits"]["test"], expected)


def test_shuffled_rows_are_refused(generated: dict) -> None:
    expected = expected_for(generated)
    shuffled = generated["splits"]["test"].sample(frac=1.0, random_state=3)
    with pytest.raises(SoftLabelMismatch, match="not aligned"):
        load_soft_labels(generated["root"] / "soft", "test", shuffled, expected)


def test_a_changed_tfidf_model_is_refused(generated: dict, tmp_path: Path) -> None:
    changed = tmp_path / "tfidf"
    shutil.copytree(generated["root"] / "tfidf", changed)
    config = json.loads((changed / "en/config.json").read_text(encoding="utf-8"))
    (changed / "en/config.json").write_text(json.dumps({**config, "C": config["C"] * 2}), encoding="utf-8")
    with pytest.raises(SoftLabelMismatch, match="tfidf_sha256"):
        load_soft_labels(generated["root"] / "soft", "test", generated["splits"]["test"],
                         expected_for(generated, tfidf_dir=changed))


def test_edited_ensemble_weights_are_refused(generated: dict, tmp_path: Path) -> None:
    soft = tmp_path / "soft"
    shutil.copytree(generated["root"] / "soft", soft)
    report = json.loads((soft / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    weights = report["teacher"]["ensemble_weights"]
    weights["en"] = 1.0 - weights["en"] if weights["en"] != 0.5 else 0.0
    (soft / FINGERPRINT_FILE).write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(SoftLabelMismatch, match="edited"):
        load_soft_labels(soft, "test", generated["splits"]["test"], expected_for(generated))
    report["teacher"]["id"] = fingerprint_id(report["teacher"])  # a consistent forgery: the logits still disagree
    (soft / FINGERPRINT_FILE).write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(SoftLabelMismatch, match="mixture"):
        load_soft_labels(soft, "test", generated["splits"]["test"], expected_for(generated))


def test_an_edited_text_under_the_same_id_is_refused(generated: dict) -> None:
    edited = generated["splits"]["validation"].copy()
    edited.loc[3, "text"] = edited.loc[3, "text"] + " (edited)"
    with pytest.raises(SoftLabelMismatch, match="texts differ"):
        load_soft_labels(generated["root"] / "soft", "validation", edited, expected_for(generated))


def test_the_memorisation_gap_is_reported_per_language_and_member(generated: dict) -> None:
    gap = generated["report"]["memorisation_gap"]
    assert set(gap) == {"en", "zh"}
    for members in gap.values():
        assert set(members) == {"transformer", "tfidf", "ensemble"}
        for entry in members.values():
            assert 0 <= entry["transfer"] <= 1 and 0 <= entry["validation"] <= 1
            assert entry["gap"] == pytest.approx(entry["transfer"] - entry["validation"], abs=2e-4)
