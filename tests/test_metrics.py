"""Evaluation core: metrics against sklearn, bootstrap intervals, calibration, size and speed of a tiny real BERT."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
)

from polydistill.model.metrics import (
    SpeedSettings,
    bootstrap_macro_f1,
    classification_metrics,
    expected_calibration_error,
    macro_f1_from_confusion,
    markdown_summary,
    measure_speeds,
    model_size,
    paired_bootstrap_difference,
    paired_speedup,
    plot_confusion_matrices,
    plot_grouped_bars,
    resample_indices,
    write_bars_csv,
    write_confusion_csv,
)
from polydistill.model.runtime import probabilities_from_model

torch.set_num_threads(1)

LABEL_NAMES = ["negative", "neutral", "positive"]
WORDS = ["good", "bad", "film", "hotel", "very", "not", "the", "was", "room", "story", "boring", "great"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
HIDDEN, LAYERS, INTERMEDIATE, POSITIONS, TYPES = 16, 2, 32, 40, 2


def noisy_probabilities(labels: np.ndarray, classes: int, accuracy: float, seed: int) -> np.ndarray:
    """Random probabilities whose argmax equals the label for about `accuracy` of the rows."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), classes))
    keep = rng.random(len(labels)) < accuracy
    logits[keep, labels[keep]] += 4.0
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def sample(rows: int, classes: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.random.default_rng(seed).integers(0, classes, size=rows)
    return labels, noisy_probabilities(labels, classes, accuracy, seed + 1)


# ---------------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed: int) -> None:
    labels, probabilities = sample(500, 3, 0.7, seed)
    predictions = probabilities.argmax(axis=1)
    metrics = classification_metrics(labels, probabilities, LABEL_NAMES, bootstrap_samples=200, confidence=0.95,
                                     ece_bins=10, seed=seed)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, labels=[0, 1, 2])
    assert metrics["n"] == 500
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(labels, predictions, average="weighted"))
    assert metrics["macro_precision"] == pytest.approx(precision.mean())
    assert metrics["macro_recall"] == pytest.approx(recall.mean())
    for index, name in enumerate(LABEL_NAMES):
        assert metrics["per_class"][name] == pytest.approx(
            {"precision": precision[index], "recall": recall[index], "f1": f1[index], "support": support[index]})
    assert metrics["confusion_matrix"] == confusion_matrix(labels, predictions, labels=[0, 1, 2]).tolist()


def test_fast_macro_f1_equals_sklearn_on_resamples_with_absent_classes() -> None:
    """Tiny resamples with a rare class: many lack it, or never predict it, or predict it while it is absent."""
    rng = np.random.default_rng(7)
    labels = np.array([0] * 6 + [1] * 6 + [2])
    predictions = np.array([0, 0, 0, 0, 1, 2, 1, 1, 1, 1, 0, 2, 1])
    cases = {"absent_and_unpredicted": 0, "absent_but_predicted": 0, "present_but_unpredicted": 0}
    for _ in range(300):
        rows = rng.integers(0, len(labels), size=len(labels))
        true, predicted = labels[rows], predictions[rows]
        confusion = np.bincount(true * 3 + predicted, minlength=9).reshape(3, 3)
        assert macro_f1_from_confusion(confusion) == pytest.approx(
            f1_score(true, predicted, average="macro", zero_division=0))
        present, predicted_any = 2 in true, 2 in predicted
        cases["absent_and_unpredicted"] += not present and not predicted_any
        cases["absent_but_predicted"] += not present and predicted_any
        cases["present_but_unpredicted"] += present and not predicted_any
    assert all(count > 0 for count in cases.values()), cases


def test_bootstrap_resamples_equal_sklearn_on_the_same_rows() -> None:
    labels, probabilities = sample(60, 3, 0.6, 3)
    predictions = probabilities.argmax(axis=1)
    fast = bootstrap_macro_f1(labels, predictions, 3, samples=50, seed=11)
    rows = np.random.default_rng(11).integers(0, 60, size=(50, 60))  # the documented resampling scheme
    slow = [f1_score(labels[index], predictions[index], average="macro", zero_division=0) for index in rows]
    np.testing.assert_allclose(fast, slow)


def test_confidence_interval_contains_the_estimate_and_narrows_with_more_rows() -> None:
    widths = []
    for rows in (200, 4000):
        labels, probabilities = sample(rows, 2, 0.75, rows)
        metrics = classification_metrics(labels, probabilities, ["negative", "positive"], 1000, 0.95, 10, seed=0)
        assert metrics["macro_f1_ci_low"] < metrics["macro_f1"] < metrics["macro_f1_ci_high"]
        widths.append(metrics["macro_f1_ci_high"] - metrics["macro_f1_ci_low"])
    assert widths[1] < widths[0] / 2.5  # ~ 1 / sqrt(20) in theory


def test_vectorised_bootstrap_equals_sklearn_on_the_same_resamples() -> None:
    labels, probabilities = sample(300, 3, 0.6, 5)
    predictions = probabilities.argmax(axis=1)
    fast = bootstrap_macro_f1(labels, predictions, 3, samples=200, seed=0)
    indices = np.concatenate(list(resample_indices(len(labels), 200, seed=0)))
    slow = [f1_score(labels[rows], predictions[rows], average="macro") for rows in indices]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    labels, probabilities = sample(300, 2, 0.7, 9)
    runs = [classification_metrics(labels, probabilities, ["a", "b"], 300, 0.9, 10, seed=4) for _ in range(2)]
    assert runs[0]["macro_f1_ci_low"] == runs[1]["macro_f1_ci_low"]
    other = classification_metrics(labels, probabilities, ["a", "b"], 300, 0.9, 10, seed=5)
    assert other["macro_f1_ci_low"] != runs[0]["macro_f1_ci_low"] or other["macro_f1_ci_high"] != runs[0][
        "macro_f1_ci_high"]


def test_ece_is_zero_when_calibrated_and_large_when_overconfident() -> None:
    # Bins hold confidences 0.6, 0.8 and 1.0 with exactly 60 %, 80 % and 100 % of their rows right.
    confidences = np.repeat([0.6, 0.8, 1.0], 10)
    correct = np.concatenate([np.arange(10) < 6, np.arange(10) < 8, np.ones(10, dtype=bool)])
    labels = np.where(correct, 0, 1)
    probabilities = np.column_stack([confidences, 1 - confidences])
    assert expected_calibration_error(labels, probabilities, bins=10) == pytest.approx(0.0, abs=1e-12)
    overconfident = np.column_stack([np.full(30, 0.99), np.full(30, 0.01)])
    assert expected_calibration_error(labels, overconfident, bins=10) == pytest.approx(0.99 - 24 / 30)


def test_ece_weighs_each_bin_on_its_own() -> None:
    """Over- and underconfident bins that cancel overall still add up: |0.55 − 1| and |0.95 − 0.5|, half each."""
    labels = np.array([0] * 10 + [0] * 5 + [1] * 5)
    confidences = np.repeat([0.55, 0.95], 10)
    probabilities = np.column_stack([confidences, 1 - confidences])
    assert expected_calibration_error(labels, probabilities, bins=10) == pytest.approx(0.45)


def test_paired_difference_of_identical_systems_is_exactly_zero() -> None:
    labels, probabilities = sample(400, 3, 0.7, 21)
    result = paired_bootstrap_difference(labels, probabilities, probabilities.copy(), 500, 0.95, seed=1)
    for key in ("difference", "difference_bootstrap_mean", "difference_ci_low", "difference_ci_high"):
        assert result[key] == 0.0
    assert result["ratio"] == result["ratio_ci_low"] == result["ratio_ci_high"] == 1.0


def test_paired_difference_sees_a_better_system() -> None:
    labels, _ = sample(1000, 2, 0.0, 31)
    better, worse = noisy_probabilities(labels, 2, 0.9, 1), noisy_probabilities(labels, 2, 0.6, 2)
    result = paired_bootstrap_difference(labels, better, worse, 1000, 0.95, seed=0)
    f1_better = f1_score(labels, better.argmax(axis=1), average="macro")
    f1_worse = f1_score(labels, worse.argmax(axis=1), average="macro")
    assert result["difference"] == pytest.approx(f1_better - f1_worse)
    assert 0 < result["difference_ci_low"] < result["difference"] < result["difference_ci_high"]
    assert result["ratio"] == pytest.approx(f1_better / f1_worse)
    assert 1 < result["ratio_ci_low"] < result["ratio"] < result["ratio_ci_high"]


def test_inputs_that_disagree_are_refused() -> None:
    labels, probabilities = sample(20, 3, 0.5, 0)
    with pytest.raises(ValueError):
        classification_metrics(labels, probabilities, ["a", "b"], 10, 0.95, 10, 0)
    with pytest.raises(ValueError):
        classification_metrics(labels[:-1], probabilities, LABEL_NAMES, 10, 0.95, 10, 0)
    with pytest.raises(ValueError):
        paired_bootstrap_difference(labels, probabilities, probabilities[:, :2], 10, 0.95, 0)


# ---------------------------------------------------------------------------------------------------- models


def save_tiny_classifier(directory: Path) -> Path:
    """A WordLevel tokenizer ([CLS] text [SEP]) and a small random BERT classifier, saved as an HF folder."""
    vocabulary = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.BertProcessing(("[SEP]", vocabulary["[SEP]"]), ("[CLS]", vocabulary["[CLS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=POSITIONS)
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=2, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS,
                        type_vocab_size=TYPES, pad_token_id=0, num_labels=len(LABEL_NAMES))
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights spread wider than the default init, so that texts get different probabilities
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_bert"))


def texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS + ["unseen"], size=rng.integers(1, 25))) for _ in range(count)]


def test_model_size_splits_embedding_and_other_parameters_exactly(model_dir: Path) -> None:
    vocab = len(SPECIALS) + len(WORDS)
    embedding = (vocab + POSITIONS + TYPES) * HIDDEN
    layer_norm = 2 * HIDDEN
    per_layer = 4 * (HIDDEN * HIDDEN + HIDDEN) + layer_norm + (HIDDEN * INTERMEDIATE + INTERMEDIATE) + (
        INTERMEDIATE * HIDDEN + HIDDEN) + layer_norm
    other = layer_norm + LAYERS * per_layer + (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * 3 + 3)  # pooler, classifier
    size = model_size(model_dir)
    assert size["embedding_params"] == embedding
    assert size["non_embedding_params"] == other
    assert size["total_params"] == embedding + other
    assert size["vocab_size"] == vocab
    assert size["weight_files"] == ["model.safetensors"]
    assert size["weights_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert size["weights_bytes"] > 4 * (embedding + other)  # fp32 weights plus the safetensors header
    assert size["weights_mb"] == size["weights_bytes"] / 1e6


def test_speeds_are_measured_interleaved_after_warm_up_and_restore_threads() -> None:
    """Two classifiers whose calls cost a known 4 and 12 ms per call: every call is counted (warm-up at batch 1 and
    at the measured batch first), rounds alternate the order, and the figures and paired ratio follow."""
    calls: list[tuple[str, int]] = []

    def costing(name: str, seconds: float):
        def classify(batch: list[str]) -> None:
            calls.append((name, len(batch)))
            time.sleep(seconds)
        return classify

    torch.set_num_threads(1)
    settings = SpeedSettings(threads=2, latency_repeats=3, throughput_batch=8, throughput_texts=16, warmup=1,
                             rounds=2)
    speeds = measure_speeds({"fast": costing("fast", 0.004), "slow": costing("slow", 0.012)}, texts(40, 1), settings)
    assert torch.get_num_threads() == 1 and speeds["fast"]["threads"] == 2
    warm_up = [("fast", 1), ("fast", 8), ("slow", 1), ("slow", 8)]
    one_round = {name: [(name, 1)] * 3 + [(name, 8)] * 2 for name in ("fast", "slow")}
    assert calls == warm_up + one_round["fast"] + one_round["slow"] + one_round["slow"] + one_round["fast"]
    fast, slow = speeds["fast"], speeds["slow"]
    assert 4 <= fast["latency_ms_median"] <= fast["latency_ms_p90"] and slow["latency_ms_median"] >= 12
    assert fast["throughput_texts_per_s"] <= 16 / (2 * 0.004) and len(fast["throughput_rounds"]) == 2
    assert fast["throughput_texts_per_s_min"] <= fast["throughput_texts_per_s"] <= fast["throughput_texts_per_s_max"]
    ratio = paired_speedup(fast, slow)
    assert 1.5 < ratio["throughput_ratio"] < 3.5 and ratio["throughput_ratio_min"] <= ratio["throughput_ratio_max"]
    assert ratio["latency_ratio"] == pytest.approx(slow["latency_ms_median"] / fast["latency_ms_median"])


def test_probabilities_keep_the_original_row_order(model_dir: Path) -> None:
    sentences = texts(23, 2)
    batched = probabilities_from_model(model_dir, sentences, max_length=16, batch_size=5, threads=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        single = np.vstack([torch.softmax(model(**tokenizer(text, truncation=True, max_length=16,
                                                             return_tensors="pt")).logits, dim=-1).numpy()
                            for text in sentences])
    assert batched.shape == (23, len(LABEL_NAMES))
    np.testing.assert_allclose(batched, single, atol=1e-6)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-6)
    assert len({len(text.split()) for text in sentences}) > 5  # the batches really needed padding
    assert np.ptp(single, axis=0).min() > 1e-4  # rows differ far beyond the tolerance: a shuffled order would show


# ---------------------------------------------------------------------------------------------------- outputs


TABLE = {"en": {"teacher": 0.82, "kd_student": 0.80, "ce_student": 0.78, "tfidf": 0.79},
         "es": {"teacher": 0.70, "kd_student": 0.69, "tfidf": 0.62}}
CI = {"en": {"teacher": (0.80, 0.84), "kd_student": (0.78, 0.82), "ce_student": (0.76, 0.80), "tfidf": (0.77, 0.81)},
      "es": {"teacher": (0.66, 0.74), "kd_student": (0.65, 0.73)}}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path: Path) -> None:
    bars = plot_grouped_bars(TABLE, CI, tmp_path / "bars.png")
    matrices = plot_confusion_matrices({"teacher": [[50, 3], [7, 40]], "kd_student": [[48, 5], [9, 38]]},
                                       ["negative", "positive"], "en", tmp_path / "confusion.png")
    for path in (bars, matrices):
        content = path.read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5000


def test_bars_csv_rows(tmp_path: Path) -> None:
    with open(write_bars_csv(TABLE, CI, tmp_path / "bars.csv"), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7
    assert rows[0] == {"lang": "en", "system": "teacher", "macro_f1": "0.82", "ci_low": "0.8", "ci_high": "0.84"}
    assert rows[-1] == {"lang": "es", "system": "tfidf", "macro_f1": "0.62", "ci_low": "", "ci_high": ""}


def test_confusion_csv_has_one_named_row_per_test_row(tmp_path: Path) -> None:
    path = write_confusion_csv(np.array([0, 1, 1]), np.array([0, 0, 1]), ["negative", "positive"],
                               tmp_path / "confusion.csv")
    assert path.read_text(encoding="utf-8").splitlines() == [
        "actual,predicted", "negative,negative", "positive,negative", "positive,positive"]


def test_markdown_summary_formats_columns() -> None:
    rows = [{"lang": "en", "macro_f1": 0.81234, "params": 10_600_000}, {"lang": "es|x", "macro_f1": float("nan")}]
    table = markdown_summary(rows, [("lang", "Language", ""), ("macro_f1", "Macro-F1", ".3f"),
                                    ("params", "Params", ",d")])
    assert table.splitlines() == [
        "| Language | Macro-F1 | Params |",
        "|---|---:|---:|",
        "| en | 0.812 | 10,600,000 |",
        "| es\\|x | – | – |",
    ]
