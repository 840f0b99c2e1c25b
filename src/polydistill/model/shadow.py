"""The teacher as a shadow scorer of new text: the same combination that produced the soft labels.

The transformer's probabilities, mixed per language with the TF-IDF member by the weight the soft_labels stage chose
on validation (recorded in the soft-label fingerprint); the transformer alone when the teacher has no TF-IDF member.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from polydistill.model.soft_labels import FINGERPRINT_FILE, SoftLabelSettings, mix, softmax
from polydistill.model.tfidf import load_model
from polydistill.model.training import EncodedSet, encode_texts, predict_logits


class ShadowTeacher:
    """(lang, texts) -> the teacher's class probabilities [N, K], in label-id order."""

    def __init__(self, teacher_dir: Path, tfidf_dir: Path, soft_dir: Path, settings: SoftLabelSettings) -> None:
        torch.set_num_threads(settings.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, local_files_only=True)
        fingerprint = json.loads((soft_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))["teacher"]
        self.weights: dict[str, float] | None = fingerprint["ensemble_weights"]
        self.tfidf_dir, self.settings = tfidf_dir, settings

    def __call__(self, lang: str, texts: list[str]) -> np.ndarray:
        encoded = EncodedSet(encode_texts(self.tokenizer, texts, self.settings.max_length),
                             np.zeros(len(texts), dtype=np.int64), np.full(len(texts), lang))
        logits = predict_logits(self.model, encoded, self.tokenizer.pad_token_id, self.settings.batch_size)
        if self.weights is None:
            return softmax(logits)
        return np.exp(mix(logits, load_model(self.tfidf_dir / lang).probabilities(texts), self.weights[lang]))
