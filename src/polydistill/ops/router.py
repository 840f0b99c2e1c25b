"""One serving model for every language: an MLflow pyfunc that routes each text to its language's champion student.

The router is logged by polydistill.ops.registry.register_router as an MLflow "model from code": this file travels with
the model (no pickle, no polydistill install needed to serve it), with each champion student as an artifact and a
model_config of {languages, student_versions, max_length, batch_size}. A text goes to the student named by its
`lang` column when given, otherwise to the language that lingua detects among the configured ones (lingua: a
maintained, offline, n-gram based detector that can be restricted to a language set, which makes it accurate on
short texts). A text lingua cannot place (no letters, e.g. "123") goes to the first configured language.
"""

from __future__ import annotations

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


def bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def request_frame(model_input: Any, languages: list[str]) -> pd.DataFrame:
    """The request as a frame of text and lang (None = detect), or a 400 explaining what is wrong."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise bad_request(f"expected a table with a 'text' column, got {type(model_input).__name__}")
    if "text" not in model_input.columns:
        raise bad_request(f"missing column 'text' (got columns {list(model_input.columns)})")
    texts = model_input["text"].tolist()
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise bad_request(f"row {row}: text must be a string, got {type(text).__name__} {text!r}")
        if not text.strip():
            raise bad_request(f"row {row}: text is empty")
    langs = model_input["lang"].tolist() if "lang" in model_input.columns else [None] * len(texts)
    langs = [None if lang is None or (isinstance(lang, float) and pd.isna(lang)) or lang == "" else lang
             for lang in langs]
    for row, lang in enumerate(langs):
        if lang is not None and lang not in languages:
            raise bad_request(f"row {row}: lang {lang!r} is not one of {languages}")
    return pd.DataFrame({"text": texts, "lang": langs})


def language_detector(languages: list[str]) -> Any:
    """A lingua detector restricted to the configured ISO 639-1 languages."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    known = [Language.from_iso_code_639_1(IsoCode639_1.from_str(code)) for code in languages]
    return LanguageDetectorBuilder.from_languages(*known).build()


def detect_languages(detector: Any, texts: list[str], fallback: str) -> list[str]:
    """Each text's ISO 639-1 code among the detector's languages (the fallback when it cannot tell)."""
    detected = detector.detect_languages_in_parallel_of(texts)
    return [language.iso_code_639_1.name.lower() if language is not None else fallback for language in detected]


class StudentRouter(mlflow.pyfunc.PythonModel):
    """Routes each text to its language's student; returns lang, label, score and student_version per text."""

    def load_context(self, context: Any) -> None:
        from transformers.utils import logging as transformers_logging

        config = context.model_config
        self.languages: list[str] = list(config["languages"])
        self.versions: dict[str, str] = {lang: str(v) for lang, v in config["student_versions"].items()}
        self.max_length = int(config.get("max_length", 64))
        self.batch_size = int(config.get("batch_size", 32))
        transformers_logging.disable_progress_bar()  # a served model's logs get no weight-loading bars
        self.students = {lang: mlflow.transformers.load_model(context.artifacts[lang], return_type="components")
                         for lang in self.languages}
        for student in self.students.values():
            student["model"].eval()
        self.detector = language_detector(self.languages)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """lang, label, score and student_version for each row of a frame with text (and optional lang)."""
        frame = request_frame(model_input, self.languages)
        missing = frame["lang"].isna()
        if missing.any():
            frame.loc[missing, "lang"] = detect_languages(self.detector, frame.loc[missing, "text"].tolist(),
                                                          self.languages[0])
        output = pd.DataFrame({"lang": frame["lang"], "label": "", "score": 0.0,
                               "student_version": frame["lang"].map(self.versions)})
        for lang, rows in frame.groupby("lang").groups.items():
            labels, scores = self.classify(lang, frame.loc[rows, "text"].tolist())
            output.loc[rows, "label"] = labels
            output.loc[rows, "score"] = scores
        return output

    def classify(self, lang: str, texts: list[str]) -> tuple[list[str], list[float]]:
        """One language's texts through its student, in batches: top label and its probability."""
        import torch

        model, tokenizer = self.students[lang]["model"], self.students[lang]["tokenizer"]
        labels, scores = [], []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                probabilities = torch.softmax(model(**batch).logits, dim=-1)
            best = probabilities.max(dim=-1)
            labels += [model.config.id2label[int(index)] for index in best.indices]
            scores += best.values.tolist()
        return labels, scores


mlflow.models.set_model(StudentRouter())
