"""How a classifier folder runs at inference: the one loader that evaluate, the gate's scorer and the router share.

Runtimes (params.yaml ``serving.runtime``):
- ``torch_fp32``: the model as trained.
- ``torch_int8``: PyTorch dynamic quantisation of every Linear layer (int8 weights, activations quantised per
  batch at run time); embeddings and LayerNorms stay fp32. Nothing new is stored: the int8 model is derived from
  the fp32 weights when loaded, deterministically, so the registered weights stay safetensors. (PyTorch marks its
  quantised-tensor API deprecated in favour of torchao; it works in the pinned torch 2.13, and its warning is
  silenced here.) Activation scales are chosen per batch, so a text's probabilities can move by ~1e-4 with the
  texts it is batched with (padding included); argmaxes on the real test sets agree with fp32 on ≥ 98.7% of texts
  (the evaluate stage reports the agreement per language).
ONNX Runtime was measured too (BENCHMARKS.md, runtimes); it was not faster than ``torch_int8`` at batch 32 here
and would need a second serialised model per student.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

RUNTIMES = ("torch_fp32", "torch_int8")


def for_runtime(model: PreTrainedModel, runtime: str) -> torch.nn.Module:
    """The eval-mode model to run in `runtime` (a quantised copy for torch_int8)."""
    model = model.eval()
    if runtime == "torch_fp32":
        return model
    if runtime == "torch_int8":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    raise ValueError(f"unknown runtime '{runtime}': use one of {', '.join(RUNTIMES)}")


@dataclass
class TextClassifier:
    """A tokenizer and a model in a runtime: texts in, class probabilities out (tokenisation included)."""

    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    max_length: int

    @property
    def label_names(self) -> list[str]:
        config = self.model.config
        return [config.id2label[index] for index in range(config.num_labels)]

    def _softmax(self, encoded: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(self.model(**encoded).logits.float(), dim=-1).numpy()

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Probabilities [N, K] of one batch, padded to its longest text."""
        return self._softmax(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                            return_tensors="pt"))

    def probabilities(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Probabilities [N, K] in the order of `texts`, batched by token length (dynamic padding)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        probabilities = np.zeros((len(texts), self.model.config.num_labels), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            probabilities[rows] = self._softmax(
                self.tokenizer.pad({"input_ids": [encoded[row] for row in rows]}, return_tensors="pt"))
        return probabilities


def load_text_classifier(model_dir: Path, runtime: str, max_length: int) -> TextClassifier:
    """A Hugging Face classifier folder (local files only) in `runtime`."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    return TextClassifier(tokenizer, for_runtime(model, runtime), max_length)


def probabilities_from_model(model_dir: Path, texts: list[str], max_length: int, batch_size: int, threads: int,
                             runtime: str = "torch_fp32") -> np.ndarray:
    """Softmax class probabilities [N, K] of a classifier folder in `runtime`, in the order of `texts`."""
    from polydistill.model.metrics import torch_threads

    with torch_threads(threads):
        return load_text_classifier(Path(model_dir), runtime, max_length).probabilities(texts, batch_size)
