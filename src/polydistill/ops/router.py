"""One serving model for every language: an MLflow pyfunc that routes each text to its language's champion student.

The router is logged by polydistill.ops.serving.register_router as an MLflow "model from code": this file travels with
the model (no pickle, no polydistill install needed to serve it), with each champion student as an artifact and a
model_config of {languages, student_versions, runtime, max_length, batch_size, inference_threads, threads, max_rows,
max_text_chars, foreign_confidence, foreign_confirmation}. polydistill/model/runtime.py travels beside it (MLflow
code_paths), so each student runs in the same runtime (e.g. int8) as in the evaluate stage and the gate. A text goes
to the student named by its `lang` column when given, otherwise to the language that lingua detects among the
configured ones (lingua: a maintained, offline, n-gram based detector); with `lang` given, no detection runs. Text in
a language we do not serve is answered "unsupported language" instead of being forced into the nearest configured one
when lingua's 75-language screen is at least `foreign_confidence` sure of it and a high-accuracy check confirms it
with `foreign_confirmation` (LanguageIdentifier). Each output row has a `status`: "ok", "unsupported language
(<iso>)", "language not recognised" (no letters, e.g. "123": pass `lang`) or "no champion for <lang>" (a configured
language whose student has not been promoted); only "ok" rows carry a label.
Requests over `max_rows` rows or with a text over `max_text_chars` characters are refused with HTTP 400.
When the server's environment names an inference log (polydistill/ops/inference_log.py, also shipped as code_paths),
every answered text is recorded there for the monitor flow.
"""

from __future__ import annotations

import copy
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

EXAMPLE_TEXTS = {
    "en": "The film was a delight from start to finish.",
    "es": "La película fue aburrida y demasiado larga.",
    "id": "Filmnya bagus sekali, saya suka.",
    "sl": "Film je bil res dober, priporočam ga.",
    "zh": "这家酒店的服务非常好，房间也很干净。",
}


OUTPUT_COLUMNS = ("lang", "label", "score", "student_version", "status")


def bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def is_missing(value: Any) -> bool:
    """None, NaN, pd.NA or an empty string: a lang the router detects."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value


def frame_rows(model_input: Any) -> tuple[list[Any], list[Any]]:
    """The text and lang columns of a request frame (or dict of columns) as lists (lang: None when absent)."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise bad_request(f"expected a table with a 'text' column, got {type(model_input).__name__}")
    if "text" not in model_input.columns:
        raise bad_request(f"missing column 'text' (got columns {list(model_input.columns)})")
    texts = model_input["text"].tolist()
    return texts, model_input["lang"].tolist() if "lang" in model_input.columns else [None] * len(texts)


def checked_rows(texts: list[Any], langs: list[Any], languages: list[str], max_rows: int,
                 max_text_chars: int) -> list[str | None]:
    """The request's langs (None = detect) once its texts and langs are valid, or a 400 explaining what is wrong."""
    if len(texts) > max_rows:
        raise bad_request(f"{len(texts)} rows in one request; the limit is {max_rows}")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise bad_request(f"row {row}: text must be a string, got {type(text).__name__} {text!r}")
        if not text.strip():
            raise bad_request(f"row {row}: text is empty")
        if len(text) > max_text_chars:
            raise bad_request(f"row {row}: text has {len(text)} characters; the limit is {max_text_chars}")
    langs = [None if is_missing(lang) else lang for lang in langs]
    for row, lang in enumerate(langs):
        if lang is not None and lang not in languages:
            raise bad_request(f"row {row}: lang {lang!r} is not one of {languages}")
    return langs


def lingua_languages(codes: list[str]) -> list[Any]:
    """lingua's languages for ISO 639-1 codes."""
    from lingua import IsoCode639_1, Language

    return [Language.from_iso_code_639_1(IsoCode639_1.from_str(code)) for code in codes]


def language_detector(languages: list[str]) -> Any:
    """A high-accuracy lingua detector restricted to the configured ISO 639-1 languages, its models loaded now."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*lingua_languages(languages)).with_preloaded_language_models().build()


def iso_code(language: Any) -> str:
    return language.iso_code_639_1.name.lower()


class LanguageIdentifier:
    """Which configured language each text is in, or why none, in three lingua passes:

    1. routing: a high-accuracy detector over the configured languages picks one (~0.1 ms a text);
    2. screen: a low-accuracy (trigram, ~70 MB) detector over all 75 languages flags a text whose top language is
       another one, with a confidence of at least `screen_confidence`;
    3. confirmation: a flagged text is scored again in high-accuracy mode over the configured languages and the
       flagged one; it is unsupported only if the flagged language wins with at least `confirm_confidence`.
    The screen alone refused 26% of the Spanish and Indonesian test tweets (taken for Portuguese, Malay, ...); with the
    confirmation 1.2% at most, while it still refuses 94.5% of German and Dutch sentences (BENCHMARKS.md, benchmark 2).
    The routing detector's and the screen's models load with the router (~0.5 s, ~350 MB); a confirmation
    language's high-accuracy models load the first time the screen flags it (0.1-0.5 s once; ~1 GB if all 70 do).
    """

    def __init__(self, languages: list[str], screen_confidence: float, confirm_confidence: float) -> None:
        from lingua import LanguageDetectorBuilder

        self.languages = languages
        self.screen_confidence = screen_confidence
        self.confirm_confidence = confirm_confidence
        self.detector = language_detector(languages)
        self.screen = (LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode()
                       .with_preloaded_language_models().build())
        self.confirmers: dict[Any, Any] = {}  # flagged language -> its high-accuracy detector, built when first met

    def confirmer(self, foreign: Any) -> Any:
        from lingua import LanguageDetectorBuilder

        if foreign not in self.confirmers:
            self.confirmers[foreign] = LanguageDetectorBuilder.from_languages(
                *lingua_languages(self.languages), foreign).build()
        return self.confirmers[foreign]

    def is_foreign(self, text: str, ranked: list[Any]) -> bool:
        """Whether the screen's top language is an unconfigured one and the confirmation agrees."""
        if not ranked or ranked[0].value < self.screen_confidence or iso_code(ranked[0].language) in self.languages:
            return False
        confirmed = self.confirmer(ranked[0].language).compute_language_confidence_values(text)[0]
        return confirmed.language == ranked[0].language and confirmed.value >= self.confirm_confidence

    def identify(self, texts: list[str]) -> list[tuple[str | None, str]]:
        """Per text: (configured language or None, status): "ok", "unsupported language (<iso>)" or
        "language not recognised" (neither detector can place it, e.g. no letters)."""
        detected = self.detector.detect_languages_in_parallel_of(texts)
        screened = self.screen.compute_language_confidence_values_in_parallel(texts)
        results: list[tuple[str | None, str]] = []
        for text, language, ranked in zip(texts, detected, screened, strict=True):
            if self.is_foreign(text, ranked):
                results.append((None, f"unsupported language ({iso_code(ranked[0].language)})"))
            elif language is None:
                results.append((None, "language not recognised"))
            else:
                results.append((iso_code(language), "ok"))
        return results


class StudentRouter(mlflow.pyfunc.PythonModel):
    """Routes each text to its language's student; returns lang, label, score and student_version per text."""

    def load_context(self, context: Any) -> None:
        from inference_log import InferenceLog  # ops/inference_log.py and model/runtime.py: the model's code_paths
        from runtime import TextClassifier, for_runtime
        from transformers.utils import logging as transformers_logging

        config = context.model_config
        self.languages: list[str] = list(config["languages"])
        self.versions: dict[str, str] = {lang: str(v) for lang, v in config["student_versions"].items()}
        self.max_length = int(config["max_length"])
        self.batch_size = int(config["batch_size"])
        self.max_rows = int(config["max_rows"])
        self.max_text_chars = int(config["max_text_chars"])
        transformers_logging.disable_progress_bar()  # a served model's logs get no weight-loading bars
        components = {lang: mlflow.transformers.load_model(context.artifacts[lang], return_type="components")
                      for lang in self.versions}
        threads = int(config["threads"])
        self.students = {lang: TextClassifier(parts["tokenizer"],
                                              for_runtime(parts["model"], config["runtime"], threads), self.max_length)
                         for lang, parts in components.items()}
        self.identifier = LanguageIdentifier(self.languages, float(config["foreign_confidence"]),
                                             float(config["foreign_confirmation"]))
        self.inference_log = InferenceLog.from_environment()
        # The scoring server calls predict from a pool of threads; tokenizing and inference run on a pool of their
        # own instead, `inference_threads` threads running `threads` threads each (torch's, or the ONNX Runtime
        # session's, which the inference threads share: its runs are thread-safe). torch on each calling thread
        # starts its own OpenMP team whose idle threads spin on the cores (on the server's threads one text took
        # 6 ms longer), and a fast tokenizer's padding is shared state (concurrent calls pad to each other's lengths
        # and fail), so each inference thread sets its torch threads and copies the tokenizers for itself.
        self.thread_state = threading.local()
        self.inference_pool = ThreadPoolExecutor(max_workers=int(config["inference_threads"]),
                                                 thread_name_prefix="router-inference",
                                                 initializer=self.start_inference_thread,
                                                 initargs=(threads,))

    def start_inference_thread(self, threads: int) -> None:
        """On a new inference thread: its torch thread count (OpenMP's is per thread) and its own tokenizers."""
        import torch

        torch.set_num_threads(threads)
        self.thread_state.students = {lang: replace(student, tokenizer=copy.deepcopy(student.tokenizer))
                                      for lang, student in self.students.items()}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """lang, label, score, student_version and status for each row of a frame with text (and optional lang)."""
        return pd.DataFrame(self.answer(*frame_rows(model_input)), columns=list(OUTPUT_COLUMNS), dtype=object)

    def answer(self, texts: list[Any], langs: list[Any]) -> list[dict[str, Any]]:
        """One answer per text (lang given or None): the OUTPUT_COLUMNS as a dict. Shared by `predict` and
        polydistill's HTTP server, which skips MLflow's frames and schema check on the hot path."""
        langs = checked_rows(texts, langs, self.languages, self.max_rows, self.max_text_chars)
        statuses = ["ok"] * len(texts)
        missing = [row for row, lang in enumerate(langs) if lang is None]
        if missing:
            detected = self.identifier.identify([texts[row] for row in missing])
            for row, (lang, status) in zip(missing, detected, strict=True):
                langs[row], statuses[row] = lang, status
        statuses = [f"no champion for {lang}" if status == "ok" and lang not in self.versions else status
                    for lang, status in zip(langs, statuses, strict=True)]
        records = [{"lang": lang, "label": None, "score": None,
                    "student_version": self.versions[lang] if status == "ok" else None, "status": status}
                   for lang, status in zip(langs, statuses, strict=True)]
        groups: dict[str, list[int]] = {}
        for row, record in enumerate(records):
            if record["status"] == "ok":
                groups.setdefault(record["lang"], []).append(row)
        answers = self.classify({lang: [texts[row] for row in rows] for lang, rows in groups.items()})
        for lang, rows in groups.items():
            for row, label, score in zip(rows, *answers[lang], strict=True):
                records[row]["label"], records[row]["score"] = label, score
        if self.inference_log is not None:  # it tokenizes too, so on an inference thread
            self.inference_pool.submit(self.record_inference, texts, records).result()
        return records

    def classify(self, texts_by_lang: dict[str, list[str]]) -> dict[str, tuple[list[str], list[float]]]:
        """Each language's texts through its student, in batches spread over the inference threads (largest
        first): the top label and its probability per text."""
        batches = [(lang, start, texts[start:start + self.batch_size]) for lang, texts in texts_by_lang.items()
                   for start in range(0, len(texts), self.batch_size)]
        futures = {(lang, start): self.inference_pool.submit(self.probabilities, lang, batch)
                   for lang, start, batch in sorted(batches, key=lambda batch: -len(batch[2]))}
        answers: dict[str, tuple[list[str], list[float]]] = {lang: ([], []) for lang in texts_by_lang}
        for lang, start in sorted(futures):  # each language's batches in order
            probabilities = futures[lang, start].result()
            answers[lang][0].extend(self.students[lang].label_names[int(index)]
                                    for index in probabilities.argmax(axis=1))
            answers[lang][1].extend(probabilities.max(axis=1).tolist())
        return answers

    def probabilities(self, lang: str, texts: list[str]) -> Any:
        """Class probabilities of one batch of lang's texts, on an inference thread."""
        return self.thread_state.students[lang](texts)

    def close(self) -> None:
        """Stop the inference threads once the work already given to them is done (a server swapping in another
        router version calls this when no request uses this one any more)."""
        self.inference_pool.shutdown(wait=True)

    def record_inference(self, texts: list[str], records: list[dict[str, Any]]) -> None:
        """Log the answers, on an inference thread (the log segments each text with its student's tokenizer)."""
        self.inference_log.record(texts, records, {lang: student.tokenizer
                                                   for lang, student in self.thread_state.students.items()},
                                  self.identifier.detector)


mlflow.models.set_model(StudentRouter())
