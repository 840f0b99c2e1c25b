"""Teacher soft labels: raw logits for the transfer, validation and test sets, tied to a fingerprint of the teacher.

The teacher is the fine-tuned transformer, optionally combined with the per-language TF-IDF model: probabilities
p = w·softmax(transformer) + (1 − w)·p_tfidf with w chosen per language on validation. What is stored is the
transformer's logits, the TF-IDF log-probabilities and the combined log-probabilities (the teacher's logits);
temperature is applied at distillation time, so changing it never reruns this stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import f1_score

from polydistill.archives import sha256_of

SPLIT_FILES = {"transfer": "transfer.parquet", "validation": "validation.parquet", "test": "test.parquet"}
FINGERPRINT_FILE = "fingerprint.json"
LOGIT_COLUMNS = ("transformer_logits", "tfidf_log_probs", "teacher_logits")


class SoftLabelMismatch(ValueError):
    """Stored soft labels do not belong to this teacher, label order or data."""


def teacher_fingerprint(teacher_dir: Path, labels: list[str], max_length: int,
                        tfidf_dir: Path | None, ensemble_weights: dict[str, float] | None) -> dict[str, Any]:
    """Hashes of what determines the logits: teacher weights and tokenizer, label order, max_length, ensemble."""
    config = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8"))
    fingerprint = {
        "teacher_weights_sha256": sha256_of(teacher_dir / "model.safetensors"),
        "tokenizer_sha256": sha256_of(teacher_dir / "tokenizer.json"),
        "labels": list(labels),
        "teacher_id2label": [config["id2label"][str(index)] for index in range(len(labels))],
        "max_length": max_length,
        "tfidf_sha256": _directory_hash(tfidf_dir) if tfidf_dir else None,
        "ensemble_weights": ensemble_weights,
    }
    fingerprint["id"] = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return fingerprint


def _directory_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(directory.rglob("*")):
        if file.is_file():
            digest.update(str(file.relative_to(directory)).encode())
            digest.update(sha256_of(file).encode())
    return digest.hexdigest()


def ids_hash(ids: list[str]) -> str:
    """Order-sensitive hash of row ids: any reordering or substitution changes it."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponent = np.exp(shifted)
    return exponent / exponent.sum(axis=1, keepdims=True)


def mix(transformer_logits: np.ndarray, tfidf_probabilities: np.ndarray, weight: float) -> np.ndarray:
    """log(w·softmax(transformer) + (1 − w)·p_tfidf): the ensemble teacher's logits."""
    probabilities = weight * softmax(transformer_logits) + (1.0 - weight) * tfidf_probabilities
    return np.log(np.clip(probabilities, 1e-12, None))


def mixture_log_loss(labels: np.ndarray, mixed_logits: np.ndarray) -> float:
    """Mean negative log-likelihood of the gold labels under the ensemble's probabilities."""
    return float(-mixed_logits[np.arange(len(labels)), labels].mean())


def choose_weight(labels: np.ndarray, transformer_logits: np.ndarray, tfidf_probabilities: np.ndarray,
                  grid: list[float]) -> tuple[float, float]:
    """The transformer weight from grid with the lowest validation log-loss (ties: the larger weight).

    Log-loss, a proper scoring rule, rather than macro-F1: on validation splits of 80-130 texts macro-F1 is a step
    function that a single text flips, and the students learn the whole mixed distribution, not its argmax.
    Returns the weight and its log-loss.
    """
    scored = [(mixture_log_loss(labels, mix(transformer_logits, tfidf_probabilities, w)), w) for w in grid]
    loss, weight = min(scored, key=lambda item: (round(item[0], 6), -item[1]))
    return float(weight), float(loss)


def write_split(path: Path, frame: pd.DataFrame, arrays: dict[str, np.ndarray]) -> None:
    """Parquet with id, lang and one list<float32> column per logit array, in the frame's row order."""
    columns = {"id": pa.array(frame["id"].tolist(), pa.string()), "lang": pa.array(frame["lang"].tolist(), pa.string())}
    for name, values in arrays.items():
        columns[name] = pa.array(list(values.astype(np.float32)), pa.list_(pa.float32()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def read_split(path: Path, column: str) -> tuple[list[str], np.ndarray]:
    """Ids and one logit column as a [N, K] array."""
    table = pq.read_table(path, columns=["id", column])
    return table.column("id").to_pylist(), np.stack(table.column(column).to_numpy(zero_copy_only=False))


def load_soft_labels(soft_dir: Path, split: str, frame: pd.DataFrame, expected: dict[str, Any],
                     column: str = "teacher_logits") -> np.ndarray:
    """Stored logits for `frame`'s rows, refusing a different teacher, label order or row order."""
    stored = json.loads((soft_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    for key in ("teacher_weights_sha256", "tokenizer_sha256", "labels", "teacher_id2label", "max_length"):
        if stored["teacher"][key] != expected[key]:
            raise SoftLabelMismatch(
                f"soft labels in {soft_dir} were made with {key}={stored['teacher'][key]!r}, "
                f"but the current teacher has {expected[key]!r}: rerun the soft_labels stage")
    ids, logits = read_split(soft_dir / SPLIT_FILES[split], column)
    frame_ids = frame["id"].tolist()
    if ids != frame_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, frame_ids)) if a != b), min(len(ids), len(frame_ids)))
        raise SoftLabelMismatch(
            f"soft labels for {split} are not aligned with the data: {len(ids)} stored rows vs {len(frame_ids)} "
            f"rows, first difference at row {first}")
    if logits.shape[1] != len(expected["labels"]):
        raise SoftLabelMismatch(f"stored logits have {logits.shape[1]} classes, expected {len(expected['labels'])}")
    return logits


def generate_soft_labels(teacher_dir: Path, tfidf_dir: Path | None, frames: dict[str, pd.DataFrame],
                         output_dir: Path, settings: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Teacher logits for every split frame (transfer, validation, test), ensemble weights per language, fingerprint.

    Each distinct id is run through the transformer once; repeated transfer rows share their logits.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from polydistill.teacher import encode_frame
    from polydistill.tfidf import load_model
    from polydistill.training import predict_logits

    torch.set_num_threads(settings["threads"])
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    unique = pd.concat(frames.values()).drop_duplicates("id").reset_index(drop=True)
    encoded = encode_frame(tokenizer, unique, labels, settings["max_length"])
    transformer = dict(zip(unique["id"], predict_logits(model, encoded, tokenizer.pad_token_id,
                                                        settings["batch_size"])))
    tfidf = {}
    if tfidf_dir is not None:
        for lang, rows in unique.groupby("lang"):
            probabilities = load_model(tfidf_dir / lang).probabilities(rows["text"].tolist())
            tfidf.update(zip(rows["id"], probabilities))
    weights = choose_weights(frames["validation"], transformer, tfidf, settings, labels)
    for split, frame in frames.items():
        write_split(output_dir / SPLIT_FILES[split], frame, split_arrays(frame, transformer, tfidf, weights))
    fingerprint = teacher_fingerprint(teacher_dir, labels, settings["max_length"], tfidf_dir, weights["weights"])
    report = {"teacher": fingerprint, "ensemble": weights,
              "rows": {split: {"rows": len(frame), "ids_sha256": ids_hash(frame["id"].tolist())}
                       for split, frame in frames.items()},
              "unique_texts_scored": len(unique)}
    (output_dir / FINGERPRINT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def choose_weights(validation: pd.DataFrame, transformer: dict[str, np.ndarray], tfidf: dict[str, np.ndarray],
                   settings: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Per language: the transformer weight, the validation macro-F1 of each member and of the mix, its log-loss."""
    label_ids = {label: index for index, label in enumerate(labels)}
    result: dict[str, Any] = {"weights": {}, "validation_macro_f1": {}, "validation_log_loss": {}}
    for lang, rows in validation.groupby("lang"):
        gold = rows["label"].map(label_ids).to_numpy()
        logits = np.stack([transformer[i] for i in rows["id"]])
        scores = {"transformer": float(f1_score(gold, logits.argmax(1), average="macro"))}
        weight = 1.0
        if tfidf:
            probabilities = np.stack([tfidf[i] for i in rows["id"]])
            scores["tfidf"] = float(f1_score(gold, probabilities.argmax(1), average="macro"))
            weight, log_loss = choose_weight(gold, logits, probabilities, settings["weight_grid"])
            mixed = mix(logits, probabilities, weight)
            scores["ensemble"] = float(f1_score(gold, mixed.argmax(1), average="macro"))
            result["validation_log_loss"][lang] = round(log_loss, 5)
        result["weights"][lang] = weight
        result["validation_macro_f1"][lang] = {name: round(value, 5) for name, value in scores.items()}
    return result


def split_arrays(frame: pd.DataFrame, transformer: dict[str, np.ndarray], tfidf: dict[str, np.ndarray],
                 weights: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stored logit columns for one split, row-aligned with frame."""
    logits = np.stack([transformer[i] for i in frame["id"]])
    if not tfidf:
        return {"transformer_logits": logits, "teacher_logits": logits}
    probabilities = np.stack([tfidf[i] for i in frame["id"]])
    combined = np.zeros_like(logits)
    for lang in frame["lang"].unique():
        mask = (frame["lang"] == lang).to_numpy()
        combined[mask] = mix(logits[mask], probabilities[mask], weights["weights"][lang])
    return {"transformer_logits": logits, "tfidf_log_probs": np.log(np.clip(probabilities, 1e-12, None)),
            "teacher_logits": combined}
