"""Evaluation core: metrics with bootstrap confidence intervals, calibration, model size, CPU speed, plots, tables.

Systems are compared on one language's test split from their class probabilities ([N, K] numpy arrays; labels are
class indices into `label_names`). Nothing here knows about the orchestration or the experiment tracker.

Macro-F1 convention (point estimate and every bootstrap resample alike): F1 of a class is 2·TP / (2·TP + FP + FN);
a class that is neither present nor predicted in the rows at hand (0 / 0) is left out of the macro average, exactly
as sklearn's ``f1_score(y_true, y_pred, average="macro")`` does (it averages over the labels seen in y_true ∪ y_pred).
A class that is present but never predicted, or predicted but absent, counts with F1 = 0.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from transformers import AutoModelForSequenceClassification

BAR_SYSTEMS = ("teacher", "kd_student", "ce_student", "tfidf")
EMBEDDING_MODULES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
BOOTSTRAP_CELLS_PER_CHUNK = 4_000_000  # resample indices held in memory at once (32 MB of int64)


# ---------------------------------------------------------------------------------------------------- metrics


def macro_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of one confusion matrix [K, K] or a stack [..., K, K] (rows = true, columns = predicted)."""
    true_positives = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    denominator = confusion.sum(axis=-1) + confusion.sum(axis=-2)  # (TP + FN) + (TP + FP)
    seen = denominator > 0
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros_like(true_positives), where=seen)
    return f1.sum(axis=-1) / np.maximum(seen.sum(axis=-1), 1)


def _confusion(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def resample_indices(rows: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap row indices [chunk, rows] in chunks; the same seed gives the same resamples."""
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS_PER_CHUNK // max(rows, 1))
    for start in range(0, samples, chunk):
        yield rng.integers(0, rows, size=(min(chunk, samples - start), rows))


def _bootstrap_confusions(codes: np.ndarray, indices: np.ndarray, classes: int) -> np.ndarray:
    """Confusion matrices [B, K, K] of B resamples; codes = true * K + predicted per row."""
    cells = classes * classes
    offsets = np.arange(len(indices))[:, None] * cells
    counts = np.bincount((codes[indices] + offsets).ravel(), minlength=len(indices) * cells)
    return counts.reshape(len(indices), classes, classes)


def bootstrap_macro_f1(labels: np.ndarray, predictions: np.ndarray, classes: int, samples: int,
                       seed: int) -> np.ndarray:
    """Macro-F1 of `samples` bootstrap resamples of the rows (vectorised with bincount)."""
    codes = labels * classes + predictions
    return np.concatenate([macro_f1_from_confusion(_bootstrap_confusions(codes, indices, classes))
                           for indices in resample_indices(len(labels), samples, seed)])


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Central percentile interval holding `confidence` of the values."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """ECE over equal-width bins (lower, upper] of the top-class probability: Σ |accuracy − confidence| · share."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    bin_of_row = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows_per_bin = np.bincount(bin_of_row, minlength=bins)
    gap = np.bincount(bin_of_row, weights=correct - confidence, minlength=bins)  # Σ (correct − confidence) per bin
    return float(np.abs(gap).sum() / max(rows_per_bin.sum(), 1))


def _check_inputs(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"need probabilities [N, K] for N = {len(labels)} > 0 labels, got {probabilities.shape}")
    if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {probabilities.shape[1]})")
    return labels, probabilities


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, label_names: list[str],
                           bootstrap_samples: int, confidence: float, ece_bins: int, seed: int) -> dict[str, Any]:
    """Accuracy, macro/weighted scores, per-class scores, confusion matrix, bootstrap CI of macro-F1 and ECE."""
    labels, probabilities = _check_inputs(labels, probabilities)
    if probabilities.shape[1] != len(label_names):
        raise ValueError(f"{probabilities.shape[1]} probability columns but {len(label_names)} label names")
    classes = len(label_names)
    predictions = probabilities.argmax(axis=1)
    class_ids = list(range(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, zero_division=0)
    macro_precision, macro_recall, _, _ = precision_recall_fscore_support(
        labels, predictions, average="macro", zero_division=0)
    confusion = _confusion(labels, predictions, classes)
    ci_low, ci_high = percentile_interval(
        bootstrap_macro_f1(labels, predictions, classes, bootstrap_samples, seed), confidence)
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(macro_f1_from_confusion(confusion)),
        "macro_precision": float(macro_precision),
        "macro_recall": float(macro_recall),
        "weighted_f1": float(f1_score(labels, predictions, labels=class_ids, average="weighted", zero_division=0)),
        "macro_f1_ci_low": ci_low,
        "macro_f1_ci_high": ci_high,
        "bootstrap_samples": bootstrap_samples,
        "confidence": confidence,
        "ece": expected_calibration_error(labels, probabilities, ece_bins),
        "per_class": {name: {"precision": float(precision[index]), "recall": float(recall[index]),
                             "f1": float(f1[index]), "support": int(support[index])}
                      for index, name in enumerate(label_names)},
        "label_names": list(label_names),
        "confusion_matrix": confusion.tolist(),
    }


def paired_bootstrap_difference(labels: np.ndarray, probabilities_a: np.ndarray, probabilities_b: np.ndarray,
                                samples: int, confidence: float, seed: int) -> dict[str, float]:
    """Macro-F1 of system a minus (and divided by) system b, with percentile CIs over shared row resamples.

    `ratio` is a / b (retention when a is a student and b its teacher); resamples where b scores 0 are left out
    of the ratio interval, and the ratio is NaN when b scores 0 on all rows.
    """
    labels, probabilities_a = _check_inputs(labels, probabilities_a)
    labels, probabilities_b = _check_inputs(labels, probabilities_b)
    if probabilities_a.shape != probabilities_b.shape:
        raise ValueError(f"systems disagree on shape: {probabilities_a.shape} vs {probabilities_b.shape}")
    classes = probabilities_a.shape[1]
    predictions_a, predictions_b = probabilities_a.argmax(axis=1), probabilities_b.argmax(axis=1)
    codes_a, codes_b = labels * classes + predictions_a, labels * classes + predictions_b
    scores_a, scores_b = [], []
    for indices in resample_indices(len(labels), samples, seed):
        scores_a.append(macro_f1_from_confusion(_bootstrap_confusions(codes_a, indices, classes)))
        scores_b.append(macro_f1_from_confusion(_bootstrap_confusions(codes_b, indices, classes)))
    resampled_a, resampled_b = np.concatenate(scores_a), np.concatenate(scores_b)
    differences = resampled_a - resampled_b
    ratios = resampled_a[resampled_b > 0] / resampled_b[resampled_b > 0]
    f1_a = float(macro_f1_from_confusion(_confusion(labels, predictions_a, classes)))
    f1_b = float(macro_f1_from_confusion(_confusion(labels, predictions_b, classes)))
    difference_low, difference_high = percentile_interval(differences, confidence)
    ratio_low, ratio_high = percentile_interval(ratios, confidence) if f1_b > 0 and ratios.size else (
        float("nan"), float("nan"))
    return {
        "macro_f1_a": f1_a,
        "macro_f1_b": f1_b,
        "difference": f1_a - f1_b,
        "difference_bootstrap_mean": float(differences.mean()),
        "difference_ci_low": difference_low,
        "difference_ci_high": difference_high,
        "ratio": f1_a / f1_b if f1_b > 0 else float("nan"),
        "ratio_ci_low": ratio_low,
        "ratio_ci_high": ratio_high,
        "samples": samples,
        "confidence": confidence,
    }


# ---------------------------------------------------------------------------------------------------- models


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_size(model_dir: Path) -> dict[str, Any]:
    """Parameter counts (embedding = word + position + token type tables), weights on disk and vocabulary size.

    MB are 10^6 bytes. Parameters shared between modules are counted once.
    """
    model_dir = Path(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    total = sum(parameter.numel() for parameter in model.parameters())
    embeddings = model.base_model.embeddings
    embedding = sum(module.weight.numel() for name in EMBEDDING_MODULES
                    if (module := getattr(embeddings, name, None)) is not None)
    weight_files = sorted({path for pattern in WEIGHT_FILE_PATTERNS for path in model_dir.glob(pattern)})
    if not weight_files:
        raise FileNotFoundError(f"no weights file ({', '.join(WEIGHT_FILE_PATTERNS)}) in {model_dir}")
    size_bytes = sum(path.stat().st_size for path in weight_files)
    return {
        "total_params": total,
        "embedding_params": embedding,
        "non_embedding_params": total - embedding,
        "weights_bytes": size_bytes,
        "weights_mb": size_bytes / 1e6,
        "weight_files": [path.name for path in weight_files],
        "vocab_size": int(model.config.vocab_size),
        "num_layers": int(model.config.num_hidden_layers),
        "hidden_size": int(model.config.hidden_size),
    }


def _evenly_spaced(texts: Sequence[str], count: int) -> list[str]:
    """`count` texts at evenly spaced positions of the list (cycling when it is shorter): a fixed choice."""
    positions = np.linspace(0, len(texts) - 1, num=count).round().astype(int) if count <= len(texts) else (
        np.arange(count) % len(texts))
    return [texts[position] for position in positions]


def _length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[str]]:
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    return [[texts[index] for index in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class SpeedSettings:
    """How CPU speed is measured (see ``measure_speeds``)."""

    threads: int
    latency_repeats: int      # single texts timed per round
    throughput_batch: int
    throughput_texts: int     # texts per throughput pass
    warmup: int               # untimed passes per model at batch 1 and at throughput_batch before the first round
    rounds: int               # interleaved rounds: every model once per round, order rotated

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> SpeedSettings:
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})


def _speed_round(classify: Callable[[list[str]], Any], single_texts: list[str],
                 batches: list[list[str]]) -> tuple[list[float], float]:
    """One model's latencies (ms, one text each) and its throughput pass (texts/s)."""
    latencies = []
    for text in single_texts:
        started = time.perf_counter()
        classify([text])
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for batch in batches:
        classify(batch)
    return latencies, sum(len(batch) for batch in batches) / (time.perf_counter() - started)


def measure_speeds(classifiers: dict[str, Callable[[list[str]], Any]], texts: list[str],
                   settings: SpeedSettings) -> dict[str, dict[str, Any]]:
    """CPU inference speed of several models on the same texts, tokenisation included, measured interleaved.

    Each classifier maps a list of texts to its outputs. All are warmed up (``warmup`` passes at batch 1 and at
    ``throughput_batch``), then each round times every model in turn (the order rotated by one per round, so drift
    and cache effects spread evenly): ``latency_repeats`` single texts evenly spaced over ``texts``, then a
    throughput pass over the first ``throughput_texts`` texts sorted by length into batches (dynamic padding).
    Reported: latency median, p25, p75 and p90 over all timed single texts; throughput median, min and max over
    rounds, and the per-round values so callers can form paired ratios.
    """
    if not texts:
        raise ValueError("measuring speed needs at least one text")
    sample = texts[:settings.throughput_texts]
    batches = _length_sorted_batches(sample, settings.throughput_batch)
    single_texts = _evenly_spaced(texts, settings.latency_repeats)
    names = list(classifiers)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    throughputs: dict[str, list[float]] = {name: [] for name in names}
    with torch_threads(settings.threads), torch.inference_mode():
        for name in names:
            for text in _evenly_spaced(texts, settings.warmup):
                classifiers[name]([text])
            for _ in range(settings.warmup):
                classifiers[name](batches[-1])
        for round_index in range(settings.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                round_latencies, throughput = _speed_round(classifiers[name], single_texts, batches)
                latencies[name] += round_latencies
                throughputs[name].append(throughput)
        threads_used = torch.get_num_threads()
    return {name: {
        "latency_ms_median": statistics.median(latencies[name]),
        "latency_ms_p25": float(np.percentile(latencies[name], 25)),
        "latency_ms_p75": float(np.percentile(latencies[name], 75)),
        "latency_ms_p90": float(np.percentile(latencies[name], 90)),
        "throughput_texts_per_s": statistics.median(throughputs[name]),
        "throughput_texts_per_s_min": min(throughputs[name]),
        "throughput_texts_per_s_max": max(throughputs[name]),
        "throughput_rounds": throughputs[name],
        "throughput_batch": settings.throughput_batch,
        "throughput_texts": len(sample),
        "latency_repeats": settings.latency_repeats,
        "rounds": settings.rounds,
        "threads": threads_used,
        "tokenization_included": True,
    } for name in names}


def paired_speedup(fast: dict[str, Any], slow: dict[str, Any]) -> dict[str, float]:
    """Throughput ratio fast/slow per interleaved round: median, min and max; batch-1 latency ratio slow/fast."""
    ratios = [a / b for a, b in zip(fast["throughput_rounds"], slow["throughput_rounds"], strict=True)]
    return {"throughput_ratio": statistics.median(ratios), "throughput_ratio_min": min(ratios),
            "throughput_ratio_max": max(ratios),
            "latency_ratio": slow["latency_ms_median"] / fast["latency_ms_median"]}


def plot_grouped_bars(table: dict[str, dict[str, float]], ci: dict[str, dict[str, tuple[float, float]]],
                      path: Path, systems: Sequence[str] = BAR_SYSTEMS) -> Path:
    """Per-language grouped bars of macro-F1 with CI error bars (systems missing for a language are skipped)."""
    from matplotlib.figure import Figure

    languages = list(table)
    shown = [system for system in systems if any(system in table[lang] for lang in languages)]
    width = 0.8 / max(len(shown), 1)
    figure = Figure(figsize=(max(6.0, 1.6 * len(languages)), 4.0), layout="constrained")
    axes = figure.add_subplot()
    for offset, system in enumerate(shown):
        present = [index for index, lang in enumerate(languages) if system in table[lang]]
        scores = np.array([table[languages[index]][system] for index in present])
        bounds = np.array([ci.get(languages[index], {}).get(system, (np.nan, np.nan)) for index in present])
        errors = np.abs(np.vstack([scores - bounds[:, 0], bounds[:, 1] - scores]))  # NaN (no CI): no error bar
        axes.bar(np.array(present) + (offset - (len(shown) - 1) / 2) * width, scores, width, yerr=errors,
                 capsize=3, label=system)
    axes.set_xticks(range(len(languages)), languages)
    axes.set_ylabel("macro-F1")
    axes.set_ylim(0, 1)
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_confusion_matrices(matrices: dict[str, list[list[int]]], label_names: list[str], title: str,
                            path: Path) -> Path:
    """One annotated confusion matrix per system, side by side (rows = true, columns = predicted)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(matrices) + 0.5, 3.6), layout="constrained")
    figure.suptitle(title)
    for axes, (system, matrix) in zip(figure.subplots(1, len(matrices), squeeze=False)[0], matrices.items()):
        counts = np.asarray(matrix)
        axes.imshow(counts, cmap="Blues")
        for (row, column), count in np.ndenumerate(counts):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > counts.max() / 2 else "black")
        axes.set_title(system)
        axes.set_xticks(range(len(label_names)), label_names, rotation=30)
        axes.set_yticks(range(len(label_names)), label_names)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
    figure.savefig(path, dpi=120)
    return Path(path)


def write_bars_csv(table: dict[str, dict[str, float]], ci: dict[str, dict[str, tuple[float, float]]],
                   path: Path) -> Path:
    """CSV rows lang, system, macro_f1, ci_low, ci_high (empty CI cells where none is given)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lang", "system", "macro_f1", "ci_low", "ci_high"])
        for lang, scores in table.items():
            for system, score in scores.items():
                low, high = ci.get(lang, {}).get(system, ("", ""))
                writer.writerow([lang, system, score, low, high])
    return Path(path)


def write_confusion_csv(labels: np.ndarray, predictions: np.ndarray, label_names: list[str], path: Path) -> Path:
    """CSV rows actual, predicted (label names), one per test row: the input of `dvc plots` template confusion."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((label_names[actual], label_names[predicted])
                         for actual, predicted in zip(labels, predictions, strict=True))
    return Path(path)


# ---------------------------------------------------------------------------------------------------- tables


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return format(value, spec).replace("|", "\\|")


def markdown_summary(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table; columns are (row key, header, format spec such as ".3f" or "" for as-is)."""
    header = "| " + " | ".join(title for _key, title, _spec in columns) + " |"
    rule = "|" + "|".join("---:" if spec else "---" for _key, _title, spec in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(key), spec) for key, _title, spec in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"
