"""Narrow students initialised from the teacher: fewer dimensions, heads and FFN neurons, not only fewer layers.

A 4-layer student at the teacher's width (384) is at most ~3x faster than the 12-layer teacher. Shrinking the width
needs weights for a smaller space. This module starts from the teacher-layer student (``teacher_layer_student``)
and runs it on a sample of the language's text to measure:
- the residual stream (embedding output, and each layer's two LayerNorm outputs): its top principal directions
  (uncentred, so the mean direction counts) form an orthonormal basis P (teacher width x student width);
- each attention head's output: the heads whose output moves the residual stream most are kept;
- each FFN neuron's activation: the neurons with the largest mean |activation| x output-weight norm are kept.
Every matrix is then rewritten in that basis (W -> Pᵀ W P, rows of kept heads and neurons only), LayerNorm scales
take the diagonal of Pᵀ diag(γ) P, rescaled so normalised states keep their norm. The result is an approximation
of the wide student that training (KD) then refines; the benchmark compares it with a random initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from polydistill.model.student import StudentInfo, VocabularySettings, save_student, teacher_layer_student


@dataclass(frozen=True)
class NarrowSettings:
    """Student width, heads per layer, FFN neurons per layer, and the statistics sample (texts, tokens each)."""

    hidden_size: int
    num_heads: int
    intermediate_size: int
    sample_texts: int
    max_length: int
    batch_size: int


@dataclass
class ActivationStatistics:
    """What the wide student does on the sample: residual second moments, head and neuron importances."""

    residual_moment: torch.Tensor              # (width, width): sum of x xᵀ over tokens
    head_importance: list[torch.Tensor]        # per layer (heads,): mean ‖head output after the output dense‖
    neuron_importance: list[torch.Tensor]      # per layer (ffn,): mean |activation| × ‖output weight column‖


def _padding_tokenizer(tokenizer_json: dict, max_length: int) -> Tokenizer:
    """The trimmed tokenizer, truncating to max_length and padding each batch to its longest text."""
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("<pad>"), pad_token="<pad>")
    return tokenizer


def activation_statistics(model: PreTrainedModel, tokenizer_json: dict, texts: Sequence[str],
                          settings: NarrowSettings) -> ActivationStatistics:
    """Run the wide student over the texts (batched, inference mode) and accumulate the statistics."""
    config = model.config
    width, heads = config.hidden_size, config.num_attention_heads
    head_dim = width // heads
    layers = model.base_model.encoder.layer
    moment = torch.zeros(width, width, dtype=torch.float64)
    head_sums = [torch.zeros(heads, dtype=torch.float64) for _ in layers]
    neuron_sums = [torch.zeros(config.intermediate_size, dtype=torch.float64) for _ in layers]
    mask: list[torch.Tensor] = []

    def add_residual(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        tokens = output[mask[0]].double()
        moment.add_(tokens.T @ tokens)

    def head_hook(index: int):
        output_weight = layers[index].attention.output.dense.weight.detach()

        def hook(_module: torch.nn.Module, inputs: tuple) -> None:
            context = inputs[0][mask[0]].reshape(-1, heads, head_dim)
            per_head = torch.einsum("thd,ohd->tho", context, output_weight.reshape(width, heads, head_dim))
            head_sums[index].add_(per_head.norm(dim=-1).double().sum(dim=0))
        return hook

    def neuron_hook(index: int):
        column_norms = layers[index].output.dense.weight.detach().norm(dim=0).double()

        def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            neuron_sums[index].add_(output[mask[0]].abs().double().sum(dim=0) * column_norms)
        return hook

    handles = [model.base_model.embeddings.LayerNorm.register_forward_hook(add_residual)]
    for index, layer in enumerate(layers):
        handles += [layer.attention.output.LayerNorm.register_forward_hook(add_residual),
                    layer.output.LayerNorm.register_forward_hook(add_residual),
                    layer.attention.output.dense.register_forward_pre_hook(head_hook(index)),
                    layer.intermediate.register_forward_hook(neuron_hook(index))]
    tokenizer = _padding_tokenizer(tokenizer_json, settings.max_length)
    tokens = 0
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), settings.batch_size):
                encodings = tokenizer.encode_batch(list(texts[start:start + settings.batch_size]))
                input_ids = torch.tensor([encoding.ids for encoding in encodings])
                attention_mask = torch.tensor([encoding.attention_mask for encoding in encodings])
                mask[:] = [attention_mask.bool()]
                tokens += int(attention_mask.sum())
                model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return ActivationStatistics(moment, [total / tokens for total in head_sums],
                                [total / tokens for total in neuron_sums])


def principal_basis(moment: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """The top-`size` eigenvectors of a second-moment matrix (columns, float32) and the energy share they hold."""
    values, vectors = torch.linalg.eigh(moment)
    order = torch.argsort(values, descending=True)[:size]
    return vectors[:, order].float().contiguous(), float(values[order].sum() / values.sum())


def top_indices(importance: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` most important indices, in their original order."""
    return torch.sort(torch.topk(importance, count).indices).values


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def narrow_state_dict(wide: dict[str, torch.Tensor], statistics: ActivationStatistics, basis: torch.Tensor,
                      norm_scale: float, num_heads: int, intermediate_size: int, head_dim: int,
                      prefix: str) -> dict[str, torch.Tensor]:
    """The wide student's weights rewritten in the basis, keeping the most important heads and neurons."""
    state: dict[str, torch.Tensor] = {}

    def residual_out(name: str, rows: torch.Tensor | None = None) -> None:
        """A linear map into the residual stream: Pᵀ W (over kept input columns), Pᵀ b."""
        weight = wide[f"{name}.weight"] if rows is None else wide[f"{name}.weight"][:, rows]
        state[f"{name}.weight"] = basis.T @ weight
        state[f"{name}.bias"] = basis.T @ wide[f"{name}.bias"]

    def residual_in(name: str, rows: torch.Tensor) -> None:
        """A linear map out of the residual stream: W P (kept output rows), b (kept rows)."""
        state[f"{name}.weight"] = wide[f"{name}.weight"][rows] @ basis
        state[f"{name}.bias"] = wide[f"{name}.bias"][rows]

    def layer_norm(name: str) -> None:
        state[f"{name}.weight"] = (basis.square().T @ wide[f"{name}.weight"]) * norm_scale
        state[f"{name}.bias"] = basis.T @ wide[f"{name}.bias"]

    embeddings = f"{prefix}.embeddings"
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        state[f"{embeddings}.{table}.weight"] = wide[f"{embeddings}.{table}.weight"] @ basis
    layer_norm(f"{embeddings}.LayerNorm")
    for index, (head_scores, neuron_scores) in enumerate(zip(statistics.head_importance,
                                                             statistics.neuron_importance, strict=True)):
        layer = f"{prefix}.encoder.layer.{index}"
        head_rows = _head_rows(top_indices(head_scores, num_heads), head_dim)
        for projection in ("query", "key", "value"):
            residual_in(f"{layer}.attention.self.{projection}", head_rows)
        residual_out(f"{layer}.attention.output.dense", head_rows)
        layer_norm(f"{layer}.attention.output.LayerNorm")
        neurons = top_indices(neuron_scores, intermediate_size)
        residual_in(f"{layer}.intermediate.dense", neurons)
        residual_out(f"{layer}.output.dense", neurons)
        layer_norm(f"{layer}.output.LayerNorm")
    state[f"{prefix}.pooler.dense.weight"] = basis.T @ wide[f"{prefix}.pooler.dense.weight"] @ basis
    state[f"{prefix}.pooler.dense.bias"] = basis.T @ wide[f"{prefix}.pooler.dense.bias"]
    state["classifier.weight"] = wide["classifier.weight"] @ basis
    state["classifier.bias"] = wide["classifier.bias"].clone()
    return {key: tensor.contiguous() for key, tensor in state.items()}


def build_narrow_student(teacher_dir: str | Path, texts: Iterable[str], layers: Sequence[int],
                         settings: NarrowSettings, output_dir: str | Path,
                         vocabulary: VocabularySettings = VocabularySettings(),
                         words: Sequence[tuple[str, float]] = ()) -> StudentInfo:
    """The teacher-layer student narrowed to settings' width, heads and FFN size, written to output_dir.

    The statistics come from the first ``sample_texts`` of ``texts`` (callers pass them in a fixed order).
    """
    texts = list(texts)
    wide, tokenizer_json, kept = teacher_layer_student(teacher_dir, texts, layers, vocabulary, words)
    config = wide.config
    head_dim = config.hidden_size // config.num_attention_heads
    if settings.hidden_size > config.hidden_size or settings.num_heads > config.num_attention_heads \
            or settings.intermediate_size > config.intermediate_size:
        raise ValueError("a narrow student cannot be wider than the teacher (width, heads or FFN)")
    if settings.hidden_size != settings.num_heads * head_dim:
        raise ValueError(f"hidden_size must be num_heads x the teacher's head size {head_dim}")
    statistics = activation_statistics(wide, tokenizer_json, texts[:settings.sample_texts], settings)
    basis, energy = principal_basis(statistics.residual_moment, settings.hidden_size)
    norm_scale = (energy * config.hidden_size / settings.hidden_size) ** 0.5
    state = narrow_state_dict(wide.state_dict(), statistics, basis, norm_scale, settings.num_heads,
                              settings.intermediate_size, head_dim, wide.base_model_prefix)
    narrow_config = config.__class__.from_dict({
        **config.to_dict(), "hidden_size": settings.hidden_size, "num_attention_heads": settings.num_heads,
        "intermediate_size": settings.intermediate_size})
    student = AutoModelForSequenceClassification.from_config(narrow_config)
    student.load_state_dict(state, strict=True)
    return save_student(student, tokenizer_json, kept, Path(output_dir), layers)
