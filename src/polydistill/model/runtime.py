"""How a classifier folder runs at inference: the one loader that evaluate, the gate's scorer and the router share.

Runtimes (params.yaml ``registry.router.runtime``):
- ``torch_fp32``: the model as trained.
- ``torch_int8``: PyTorch dynamic quantisation of every Linear layer (int8 weights, activations quantised per
  batch at run time); embeddings and LayerNorms stay fp32. (PyTorch marks its quantised-tensor API deprecated in
  favour of torchao; it works in the pinned torch 2.13, and its warning is silenced here.)
- ``onnx_fp32``: the model exported to ONNX and run by an ONNX Runtime CPU session in fp32: logits within ~1e-5 of
  PyTorch's, and 1.25x PyTorch's throughput for the 12-layer teacher at batch 64 (ONNX Runtime's graph
  optimisations: fused LayerNorm and GELU). The soft_labels stage scores with it.
- ``onnx_int8``: the model exported to ONNX (input ids and attention mask in, logits out) and dynamically quantised
  by ONNX Runtime (int8 weights of every MatMul, activations quantised per batch), run by an ONNX Runtime CPU session.
  Its batch-1 latency is 2-3.7x lower than ``torch_int8``'s (eager PyTorch pays a fixed cost per operator that a
  4-layer student cannot hide); at batch 32 the two are about equal, neither faster on every language (BENCHMARKS.md,
  benchmark 2).
Nothing new is stored: the int8 models are derived from the fp32 safetensors when loaded, deterministically, so the
registered weights stay safetensors. Activation scales are chosen per batch, so a text's probabilities can move by
~1e-4 with the texts it is batched with (padding included); the evaluate stage reports per language how often the
served student's argmax agrees with the fp32 one.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

RUNTIMES = ("torch_fp32", "torch_int8", "onnx_fp32", "onnx_int8")
# packages a runtime needs beyond torch and transformers
EXTRA_REQUIREMENTS = {"onnx_fp32": ("onnxruntime", "onnx"), "onnx_int8": ("onnxruntime", "onnx")}
ONNX_INPUTS = ("input_ids", "attention_mask")
ONNX_OPSET = 17

Encoded = dict[str, np.ndarray]


@dataclass(frozen=True)
class RuntimeModel:
    """A classifier's forward pass in one runtime: tokenizer output (numpy) in, logits [N, K] (float32) out."""

    config: PretrainedConfig
    logits: Callable[[Encoded], np.ndarray]


def for_runtime(model: PreTrainedModel, runtime: str, threads: int | None = None) -> RuntimeModel:
    """The model's forward pass in `runtime`. `threads` sizes an ONNX Runtime session (None: torch's current
    count); the torch runtimes use the calling thread's torch threads."""
    model = model.eval()
    if runtime == "torch_fp32":
        return RuntimeModel(model.config, torch_logits(model))
    if runtime == "torch_int8":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
            quantised = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return RuntimeModel(model.config, torch_logits(quantised))
    if runtime in ("onnx_fp32", "onnx_int8"):
        return RuntimeModel(model.config, onnx_logits(model, torch.get_num_threads() if threads is None else threads,
                                                      quantised=runtime == "onnx_int8"))
    raise ValueError(f"unknown runtime '{runtime}': use one of {', '.join(RUNTIMES)}")


def torch_logits(module: torch.nn.Module) -> Callable[[Encoded], np.ndarray]:
    def logits(encoded: Encoded) -> np.ndarray:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(values) for name, values in encoded.items()}
            return module(**inputs).logits.float().numpy()

    return logits


def onnx_logits(model: PreTrainedModel, threads: int, quantised: bool) -> Callable[[Encoded], np.ndarray]:
    """An ONNX Runtime session of the model exported (and, when `quantised`, dynamically quantised to int8),
    `threads` threads."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="polydistill-onnx-") as scratch:
        graph = exported = Path(scratch) / "model.onnx"
        export_onnx(model, exported)
        if quantised:
            graph = Path(scratch) / "model.int8.onnx"
            with root_log_filtered("pre-processing before quantization"):  # shape inference: no gain on these graphs
                quantize_dynamic(exported, graph, weight_type=QuantType.QInt8)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(graph.read_bytes(), options, providers=["CPUExecutionProvider"])

    def logits(encoded: Encoded) -> np.ndarray:
        inputs = {name: encoded[name].astype(np.int64, copy=False) for name in ONNX_INPUTS}
        return session.run(["logits"], inputs)[0].astype(np.float32, copy=False)

    return logits


def export_onnx(model: PreTrainedModel, path: Path) -> None:
    """The classifier as an ONNX graph with dynamic batch and sequence axes (TorchScript-based exporter)."""
    example = torch.ones((1, 4), dtype=torch.long)  # ids and mask alike: shapes are what the tracer needs
    dynamic = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on traced control flow and its own deprecation
        torch.onnx.export(model, (example, example), str(path),
                          input_names=list(ONNX_INPUTS), output_names=["logits"], dynamic_axes=dynamic,
                          opset_version=ONNX_OPSET, dynamo=False)


@contextmanager
def root_log_filtered(phrase: str) -> Iterator[None]:
    """Drop root-logger records containing `phrase` (ONNX Runtime's quantiser logs its advice there)."""
    def keep(record: logging.LogRecord) -> bool:
        return phrase not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@dataclass
class TextClassifier:
    """A tokenizer and a model in a runtime: texts in, class probabilities out (tokenisation included)."""

    tokenizer: PreTrainedTokenizerBase
    model: RuntimeModel
    max_length: int

    @property
    def label_names(self) -> list[str]:
        config = self.model.config
        return [config.id2label[index] for index in range(config.num_labels)]

    def _softmax(self, encoded: Encoded) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.model.logits(encoded)), dim=-1).numpy()

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Probabilities [N, K] of one batch, padded to its longest text."""
        return self._softmax(dict(self.tokenizer(list(texts), padding=True, truncation=True,
                                                 max_length=self.max_length, return_tensors="np")))

    def probabilities(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Probabilities [N, K] in the order of `texts`, batched by token length (dynamic padding)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        probabilities = np.zeros((len(texts), self.model.config.num_labels), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            probabilities[rows] = self._softmax(
                dict(self.tokenizer.pad({"input_ids": [encoded[row] for row in rows]}, return_tensors="np")))
        return probabilities


def load_text_classifier(model_dir: Path, runtime: str, max_length: int, threads: int | None = None) -> TextClassifier:
    """A Hugging Face classifier folder (local files only) in `runtime` (threads: see for_runtime)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    return TextClassifier(tokenizer, for_runtime(model, runtime, threads), max_length)


def probabilities_from_model(model_dir: Path, texts: list[str], max_length: int, batch_size: int, threads: int,
                             runtime: str = "torch_fp32") -> np.ndarray:
    """Softmax class probabilities [N, K] of a classifier folder in `runtime`, in the order of `texts`."""
    from polydistill.model.metrics import torch_threads

    with torch_threads(threads):
        return load_text_classifier(Path(model_dir), runtime, max_length, threads).probabilities(texts, batch_size)
