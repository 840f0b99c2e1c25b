"""Teacher soft labels: raw logits for the transfer, validation and test sets, tied to a fingerprint of the teacher.

The teacher is the fine-tuned transformer, optionally combined with the per-language TF-IDF model: probabilities
p = w·softmax(transformer) + (1 − w)·p_tfidf with w chosen per language on validation. Neither member scores a row it
was fitted on: the TF-IDF member scores labelled transfer rows with its cross-fitted fold models, the transformer
those it was fine-tuned on with its fold twins (polydistill.model.fold_teachers). What is stored is the
transformer's logits, the TF-IDF log-probabilities and the combined log-probabilities (the teacher's logits);
temperature is applied at distillation time, so changing it never reruns this stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import f1_score

from polydistill.data.archives import sha256_of

if TYPE_CHECKING:
    from polydistill.model.runtime import RuntimeModel

SPLIT_FILES = {"transfer": "transfer.parquet", "validation": "validation.parquet", "test": "test.parquet"}
FINGERPRINT_FILE = "fingerprint.json"
LOGIT_COLUMNS = ("transformer_logits", "tfidf_log_probs", "teacher_logits")
MIXTURE_TOLERANCE = 1e-3  # stored float32 logits vs the mixture recomputed from the stored float32 members
PROBABILITY_FLOOR = 1e-12  # probabilities are clipped here before their log (TF-IDF can give a class 0)


class SoftLabelMismatch(ValueError):
    """Stored soft labels do not belong to this teacher, label order or data."""


@dataclass(frozen=True)
class SoftLabelSettings:
    """The soft_labels section of params.yaml."""

    ensemble: bool
    weight_grid: tuple[float, ...]
    cross_fit_folds: int
    max_length: int
    batch_size: int
    threads: int
    runtime: str  # how the transformer runs (polydistill.model.runtime): torch_fp32 or onnx_fp32

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> SoftLabelSettings:
        return cls(ensemble=section["ensemble"], weight_grid=tuple(section["weight_grid"]),
                   cross_fit_folds=section["cross_fit_folds"], max_length=section["max_length"],
                   batch_size=section["batch_size"], threads=section["threads"], runtime=section["runtime"])


def teacher_fingerprint(teacher_dir: Path, labels: list[str], max_length: int, tfidf_dir: Path | None,
                        fold_teachers_dir: Path | None) -> dict[str, Any]:
    """Hashes of what the caller can check before reading logits: teacher weights and tokenizer, label order,
    max_length, the TF-IDF member (None when the teacher is the transformer alone) and the teacher's fold twins
    (None when it has none)."""
    config = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8"))
    return {
        "teacher_weights_sha256": sha256_of(teacher_dir / "model.safetensors"),
        "tokenizer_sha256": sha256_of(teacher_dir / "tokenizer.json"),
        "labels": list(labels),
        "teacher_id2label": [config["id2label"][str(index)] for index in range(len(labels))],
        "max_length": max_length,
        "tfidf_sha256": _directory_hash(tfidf_dir) if tfidf_dir else None,
        "fold_teachers_sha256": _directory_hash(fold_teachers_dir) if fold_teachers_dir else None,
    }


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short hash of every recorded field but the id itself."""
    fields = {key: value for key, value in fingerprint.items() if key != "id"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


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


def texts_hash(texts: list[str]) -> str:
    """Order-sensitive hash of texts: an edited text under an unchanged id changes it."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponent = np.exp(shifted)
    return exponent / exponent.sum(axis=1, keepdims=True)


def mix(transformer_logits: np.ndarray, tfidf_probabilities: np.ndarray, weight: float) -> np.ndarray:
    """log(w·softmax(transformer) + (1 − w)·p_tfidf): the ensemble teacher's logits."""
    probabilities = weight * softmax(transformer_logits) + (1.0 - weight) * tfidf_probabilities
    return np.log(np.clip(probabilities, PROBABILITY_FLOOR, None))


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
    """Stored logits for `frame`'s rows, refusing anything that does not match what produced them.

    Checked: every field of `expected` (teacher, tokenizer, label order, max_length, TF-IDF member, fold
    twins), the recorded
    fingerprint against its own id, the row ids and texts of the split, and that the stored teacher logits are the
    recorded ensemble weights' mixture of the stored members.
    """
    report = json.loads((soft_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    stored = report["teacher"]
    for key, value in expected.items():
        if stored.get(key) != value:
            raise SoftLabelMismatch(
                f"soft labels in {soft_dir} were made with {key}={stored.get(key)!r}, "
                f"but the current teacher has {value!r}: rerun the soft_labels stage")
    if fingerprint_id(stored) != stored.get("id"):
        raise SoftLabelMismatch(f"the fingerprint in {soft_dir} was edited after it was written (its id no longer "
                                "matches its fields, e.g. the ensemble weights): rerun the soft_labels stage")
    ids, logits = read_split(soft_dir / SPLIT_FILES[split], column)
    _check_rows(split, ids, frame, report["rows"][split])
    if logits.shape[1] != len(expected["labels"]):
        raise SoftLabelMismatch(f"stored logits have {logits.shape[1]} classes, expected {len(expected['labels'])}")
    if stored["ensemble_weights"] is not None:
        _check_mixture(soft_dir / SPLIT_FILES[split], stored["ensemble_weights"])
    return logits


def _check_rows(split: str, stored_ids: list[str], frame: pd.DataFrame, recorded: dict[str, Any]) -> None:
    frame_ids = frame["id"].tolist()
    if stored_ids != frame_ids:
        first = next((i for i, (a, b) in enumerate(zip(stored_ids, frame_ids)) if a != b),
                     min(len(stored_ids), len(frame_ids)))
        raise SoftLabelMismatch(
            f"soft labels for {split} are not aligned with the data: {len(stored_ids)} stored rows vs "
            f"{len(frame_ids)} rows, first difference at row {first}")
    if texts_hash(frame["text"].tolist()) != recorded["texts_sha256"]:
        raise SoftLabelMismatch(f"the {split} texts differ from the texts the teacher scored (same ids, edited "
                                "text): rerun the soft_labels stage")


def _check_mixture(path: Path, weights: dict[str, float]) -> None:
    """The stored teacher logits must be mix(transformer, TF-IDF, w[lang]) for the recorded weights."""
    table = pq.read_table(path)
    langs = np.array(table.column("lang").to_pylist())
    arrays = {name: np.stack(table.column(name).to_numpy(zero_copy_only=False)) for name in LOGIT_COLUMNS}
    for lang in np.unique(langs):
        rows = langs == lang
        recomputed = mix(arrays["transformer_logits"][rows], np.exp(arrays["tfidf_log_probs"][rows]), weights[lang])
        if not np.allclose(recomputed, arrays["teacher_logits"][rows], atol=MIXTURE_TOLERANCE):
            raise SoftLabelMismatch(f"stored teacher logits for {lang} in {path.name} are not the mixture with the "
                                    f"recorded weight {weights[lang]}: rerun the soft_labels stage")


@dataclass(frozen=True)
class LanguageScores:
    """One language's teacher members by row id: the transformer's logits, the TF-IDF member's probabilities
    (empty when the teacher is the transformer alone), and how many of the rows a fold twin scored."""

    transformer: dict[str, np.ndarray]
    tfidf: dict[str, np.ndarray]
    twin_rows: dict[str, int]


def split_languages(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Every language with a row in any split frame, sorted."""
    return sorted(set().union(*(frame["lang"].unique() for frame in frames.values())))


def language_frames(frames: dict[str, pd.DataFrame], lang: str) -> dict[str, pd.DataFrame]:
    """The rows of one language in each split frame."""
    return {split: frame[frame["lang"] == lang].reset_index(drop=True) for split, frame in frames.items()}


def score_language(teacher_dir: Path, fold_teachers_dir: Path | None, tfidf_dir: Path | None,
                   frames: dict[str, pd.DataFrame], train: pd.DataFrame, settings: SoftLabelSettings,
                   labels: list[str]) -> LanguageScores:
    """The teacher's members on one language's split frames: the costly, per-language part of the stage.

    Each distinct id is run through the transformer once; repeated transfer rows share their logits. A transfer row
    whose origin the teacher was fine-tuned on is scored by the fold twin that never saw it (fold_teachers_dir; None:
    by the teacher). The TF-IDF member scores transfer rows out of fold (see ``tfidf.cross_fitted_probabilities``;
    `train` is the labelled split it was fitted on), validation and test rows with the full model. Scoring a
    language alone (never mixed with another's rows in a batch), with `settings.threads` threads for torch and for
    BLAS (which a Dask worker would otherwise hold at 1), makes its outputs the same bits on whichever worker it runs.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=settings.threads):
        return _score_language(teacher_dir, fold_teachers_dir, tfidf_dir, frames, train, settings, labels)


def _score_language(teacher_dir: Path, fold_teachers_dir: Path | None, tfidf_dir: Path | None,
                    frames: dict[str, pd.DataFrame], train: pd.DataFrame, settings: SoftLabelSettings,
                    labels: list[str]) -> LanguageScores:
    import torch

    from polydistill.model.fold_teachers import FoldTeachers

    torch.set_num_threads(settings.threads)
    unique = pd.concat(frames.values()).drop_duplicates("id").reset_index(drop=True)
    scorers = pd.Series([teacher_dir] * len(unique))
    if fold_teachers_dir is not None and "origin_id" in unique:
        twins = FoldTeachers.load(fold_teachers_dir)
        scorers = unique["origin_id"].map(lambda origin: twins.twin_for(origin) or teacher_dir)
    transformer: dict[str, np.ndarray] = {}
    for scorer in sorted(scorers.unique()):
        rows = unique[(scorers == scorer).to_numpy()]
        transformer.update(zip(rows["id"], transformer_logits(teacher_dir, scorer, rows, settings)))
    twin_rows = unique[(scorers != teacher_dir).to_numpy()].groupby("lang").size()
    tfidf = tfidf_probabilities(tfidf_dir, frames, train, labels, settings.cross_fit_folds) if tfidf_dir else {}
    return LanguageScores(transformer, tfidf, {lang: int(count) for lang, count in twin_rows.items()})


def transformer_logits(teacher_dir: Path, model_dir: Path, rows: pd.DataFrame,
                       settings: SoftLabelSettings) -> np.ndarray:
    """The logits of the transformer in model_dir (the teacher or one of its twins, which share the teacher's
    tokenizer) for rows' texts, in length-bucketed batches with dynamic padding."""
    from transformers import AutoTokenizer

    from polydistill.model.training import Batch, EncodedSet, batched_logits, encode_texts

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = teacher_in_runtime(sha256_of(model_dir / "model.safetensors"), model_dir, settings.runtime,
                               settings.threads)
    encoded = EncodedSet(encode_texts(tokenizer, rows["text"].tolist(), settings.max_length),
                         np.zeros(len(rows), dtype=np.int64), rows["lang"].to_numpy())

    def forward(batch: Batch) -> np.ndarray:
        return model.logits({"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()})

    languages = "/".join(sorted(rows["lang"].unique()))
    return batched_logits(forward, model.config.num_labels, encoded, tokenizer.pad_token_id, settings.batch_size,
                          task=f"soft labels {languages} ({model_dir.name})")


@functools.cache
def teacher_in_runtime(weights_sha256: str, teacher_dir: Path, runtime: str, threads: int) -> RuntimeModel:
    """A transformer (the teacher or a fold twin) in `runtime`, built once per process for every language it scores
    (an ONNX export of the teacher takes ~10 s); keyed by the weights' hash, so a model retrained in the same folder
    is rebuilt."""
    from transformers import AutoModelForSequenceClassification

    from polydistill.model.runtime import for_runtime

    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    return for_runtime(model, runtime, threads)


def generate_soft_labels(teacher_dir: Path, fold_teachers_dir: Path | None, tfidf_dir: Path | None,
                         frames: dict[str, pd.DataFrame], train: pd.DataFrame, output_dir: Path,
                         settings: SoftLabelSettings, labels: list[str]) -> dict[str, Any]:
    """Score every language of the split frames (transfer, validation, test) in turn, then write_soft_labels."""
    scores = [score_language(teacher_dir, fold_teachers_dir, tfidf_dir, language_frames(frames, lang),
                             train[train["lang"] == lang], settings, labels)
              for lang in split_languages(frames)]
    return write_soft_labels(teacher_dir, fold_teachers_dir, tfidf_dir, frames, scores, output_dir, settings, labels)


def write_soft_labels(teacher_dir: Path, fold_teachers_dir: Path | None, tfidf_dir: Path | None,
                      frames: dict[str, pd.DataFrame], scores: list[LanguageScores], output_dir: Path,
                      settings: SoftLabelSettings, labels: list[str]) -> dict[str, Any]:
    """Ensemble weights per language (chosen on validation), every split's logit columns, the memorisation gap and
    the fingerprint, from the languages' scores; returns the report written beside the splits."""
    transformer = {row_id: logits for score in scores for row_id, logits in score.transformer.items()}
    tfidf = {row_id: probabilities for score in scores for row_id, probabilities in score.tfidf.items()}
    weights = choose_weights(frames["validation"], transformer, tfidf, settings, labels)
    for split, frame in frames.items():
        write_split(output_dir / SPLIT_FILES[split], frame, split_arrays(frame, transformer, tfidf, weights))
    fingerprint = {**teacher_fingerprint(teacher_dir, labels, settings.max_length, tfidf_dir, fold_teachers_dir),
                   "cross_fit_folds": settings.cross_fit_folds if tfidf_dir else None,
                   "ensemble_weights": weights["weights"] if tfidf_dir else None}
    fingerprint["id"] = fingerprint_id(fingerprint)
    report = {"teacher": fingerprint, "ensemble": weights,
              "memorisation_gap": memorisation_gap(frames, transformer, tfidf, weights, labels),
              "rows": {split: {"rows": len(frame), "ids_sha256": ids_hash(frame["id"].tolist()),
                               "texts_sha256": texts_hash(frame["text"].tolist())}
                       for split, frame in frames.items()},
              "unique_texts_scored": len(transformer),
              "scored_by_fold_teachers": {lang: count for score in scores for lang, count in score.twin_rows.items()},
              "transformer_runtime": settings.runtime}
    (output_dir / FINGERPRINT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def select_transfer_rows(soft_dir: Path, frame: pd.DataFrame, output_dir: Path) -> None:
    """A soft-label folder for another transfer frame made of already scored rows (any order, repeats allowed).

    Every logit column is looked up by row id; the fingerprint is kept and its transfer row record redone, so
    load_soft_labels accepts the new frame and nothing else. Used to train on a subset without scoring again.
    """
    table = pq.read_table(soft_dir / SPLIT_FILES["transfer"])
    position = {row_id: index for index, row_id in enumerate(table.column("id").to_pylist())}
    missing = sorted(set(frame["id"]) - set(position))
    if missing:
        raise SoftLabelMismatch(f"{len(missing)} rows were never scored by the teacher, e.g. {missing[:3]}")
    output_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take([position[row_id] for row_id in frame["id"]]), output_dir / SPLIT_FILES["transfer"])
    report = json.loads((soft_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    report["rows"]["transfer"] = {"rows": len(frame), "ids_sha256": ids_hash(frame["id"].tolist()),
                                  "texts_sha256": texts_hash(frame["text"].tolist())}
    (output_dir / FINGERPRINT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def write_soft_label_metrics(report: dict[str, Any], path: Path) -> None:
    """The DVC metrics of the stage: ensemble weights, validation scores, memorisation gap, rows scored (in all, and
    by the teacher's fold twins per language)."""
    metrics = {"weights": report["ensemble"]["weights"],
               "validation_macro_f1": report["ensemble"]["validation_macro_f1"],
               "memorisation_gap": report["memorisation_gap"],
               "unique_texts_scored": report["unique_texts_scored"],
               "scored_by_fold_teachers": report["scored_by_fold_teachers"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def tfidf_probabilities(tfidf_dir: Path, frames: dict[str, pd.DataFrame], train: pd.DataFrame, labels: list[str],
                        folds: int) -> dict[str, np.ndarray]:
    """TF-IDF probabilities by row id: transfer rows cross-fitted, every other split from the full model."""
    from polydistill.model.tfidf import cross_fitted_probabilities, load_model

    probabilities: dict[str, np.ndarray] = {}
    for split, frame in frames.items():
        rows = frame.drop_duplicates("id")
        for lang, lang_rows in rows.groupby("lang"):
            if split == "transfer":
                scored = cross_fitted_probabilities(tfidf_dir / lang, train[train["lang"] == lang], labels,
                                                    lang_rows, folds)
            else:
                scored = load_model(tfidf_dir / lang).probabilities(lang_rows["text"].tolist())
            probabilities.update(zip(lang_rows["id"], scored))
    return probabilities


def memorisation_gap(frames: dict[str, pd.DataFrame], transformer: dict[str, np.ndarray],
                     tfidf: dict[str, np.ndarray], weights: dict[str, Any],
                     labels: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per language and member: mean gold-label probability on labelled transfer rows vs validation rows.

    A member that scores rows it was fitted on gives its own training labels a higher probability than it gives
    held-out rows; distilling that teaches the labels back, not the member's knowledge.
    """
    label_ids = {label: index for index, label in enumerate(labels)}
    labelled = frames["transfer"].dropna(subset=["label"]).drop_duplicates("id")
    result: dict[str, dict[str, dict[str, float]]] = {}
    for lang in sorted(frames["validation"]["lang"].unique()):
        result[lang] = {}
        for member in ("transformer", "tfidf", "ensemble") if tfidf else ("transformer",):
            means = {}
            for name, frame in (("transfer", labelled), ("validation", frames["validation"])):
                rows = frame[frame["lang"] == lang]
                if rows.empty:
                    means[name] = float("nan")
                    continue
                probabilities = _member_probabilities(member, rows, transformer, tfidf, weights["weights"][lang])
                gold = rows["label"].map(label_ids).to_numpy()
                means[name] = float(probabilities[np.arange(len(rows)), gold].mean())
            result[lang][member] = {"transfer": round(means["transfer"], 4),
                                    "validation": round(means["validation"], 4),
                                    "gap": round(means["transfer"] - means["validation"], 4)}
    return result


def _member_probabilities(member: str, rows: pd.DataFrame, transformer: dict[str, np.ndarray],
                          tfidf: dict[str, np.ndarray], weight: float) -> np.ndarray:
    logits = np.stack([transformer[i] for i in rows["id"]])
    if member == "transformer":
        return softmax(logits)
    probabilities = np.stack([tfidf[i] for i in rows["id"]])
    return probabilities if member == "tfidf" else np.exp(mix(logits, probabilities, weight))


def choose_weights(validation: pd.DataFrame, transformer: dict[str, np.ndarray], tfidf: dict[str, np.ndarray],
                   settings: SoftLabelSettings, labels: list[str]) -> dict[str, Any]:
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
            weight, log_loss = choose_weight(gold, logits, probabilities, list(settings.weight_grid))
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
    return {"transformer_logits": logits, "tfidf_log_probs": np.log(np.clip(probabilities, PROBABILITY_FLOOR, None)),
            "teacher_logits": combined}
