"""Distillation losses: soft-label KL with the T² factor plus cross-entropy, hidden-state MSE and attention-map KL.

Hidden states follow the Hugging Face ``output_hidden_states=True`` convention: index 0 is the
embedding output, index i the output of encoder layer i (1-based), so a layer map pairs those indices.
Attentions follow ``output_attentions=True``: index i is encoder layer i (0-based), so their map pairs layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerMap = Sequence[tuple[int, int]]
IGNORE_LABEL = -100  # a row without a gold label (PyTorch's ignore_index convention)
PROBABILITY_FLOOR = 1e-12  # attention probabilities are clamped here before their log (a padded key's is 0)


@dataclass(frozen=True)
class LossParts:
    """The training loss and its two unweighted parts, for logging.

    total = alpha * distillation + (1 - alpha) * cross_entropy.
    """

    total: Tensor
    distillation: Tensor
    cross_entropy: Tensor


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, temperature: float,
    weights: Tensor | None = None,
) -> LossParts:
    """Hinton distillation: alpha * T² * KL(softmax(t/T) ‖ softmax(s/T)) + (1 - alpha) * CE(labels, s).

    The KL term is the true KL per example; the T² factor keeps its gradient wrt the student logits,
    (T / N) * (softmax(s/T) - softmax(t/T)), of the same order for every T. Teacher logits are constants
    (detached). A row without a gold label (label -100: unlabelled or augmented text) learns from the teacher
    alone, with weight 1 on its KL term; the total is the mean over rows, so a fully labelled batch gets exactly
    alpha * batch-mean KL * T² + (1 - alpha) * mean CE. The logged cross_entropy is the mean over labelled rows.
    With per-row loss weights the total is the weighted mean Σ wᵢ·ℓᵢ / Σ wᵢ (a row of weight k counts as k copies
    of the row); the logged parts stay unweighted.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape (label sets do not match)")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl_per_row = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(dim=-1)
    distillation_per_row = kl_per_row * temperature**2
    labelled = labels != IGNORE_LABEL
    cross_entropy_per_row = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none") * labelled
    row_alpha = torch.where(labelled, torch.full_like(kl_per_row, alpha), torch.ones_like(kl_per_row))
    per_row = row_alpha * distillation_per_row + (1.0 - row_alpha) * cross_entropy_per_row
    total = per_row.mean() if weights is None else (weights * per_row).sum() / weights.sum()
    cross_entropy = cross_entropy_per_row.sum() / labelled.sum().clamp(min=1)
    return LossParts(total=total, distillation=distillation_per_row.mean(), cross_entropy=cross_entropy)


class HiddenProjector(nn.Module):
    """One learned linear map from student width to teacher width per mapped layer pair."""

    def __init__(self, num_pairs: int, student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(num_pairs))

    def forward(self, pair_index: int, hidden: Tensor) -> Tensor:
        return self.projections[pair_index](hidden)


def hidden_state_loss(
    student_hidden: Sequence[Tensor],
    teacher_hidden: Sequence[Tensor],
    layer_map: LayerMap,
    projection: HiddenProjector | None,
    attention_mask: Tensor,
) -> Tensor:
    """Mean over the pairs (student index, teacher index) of the MSE between their hidden states.

    Only real tokens count (attention_mask 1): each pair's error is summed over real positions and
    features and divided by (number of real tokens * teacher width). Student states go through
    ``projection`` (one Linear per pair) when given; it is required when the widths differ.
    Both sequences must be tokenized identically (same length, same positions).
    """
    if not layer_map:
        raise ValueError("layer_map is empty")
    mask = attention_mask.to(student_hidden[0].dtype).unsqueeze(-1)
    real_values = mask.sum() * teacher_hidden[0].shape[-1]
    pair_losses = []
    for pair_index, (student_index, teacher_index) in enumerate(layer_map):
        student_state = student_hidden[student_index]
        teacher_state = teacher_hidden[teacher_index].detach()
        if projection is not None:
            student_state = projection(pair_index, student_state)
        elif student_state.shape[-1] != teacher_state.shape[-1]:
            raise ValueError(f"widths differ ({student_state.shape[-1]} vs {teacher_state.shape[-1]}): "
                             "pass a HiddenProjector")
        squared_error = (student_state - teacher_state).pow(2) * mask
        pair_losses.append(squared_error.sum() / real_values)
    return torch.stack(pair_losses).mean()


def attention_map_loss(
    student_attentions: Sequence[Tensor],
    teacher_attentions: Sequence[Tensor],
    layer_map: LayerMap,
    attention_mask: Tensor,
) -> Tensor:
    """Mean over the pairs (student layer, teacher layer) of KL(teacher ‖ student) between attention distributions
    averaged over heads, per real query token.

    Each attention is a (batch, heads, query, key) tensor of probabilities. Averaging over heads compares a student
    with fewer heads (a narrow one) with the teacher layer it was built from. Padded keys carry no probability in
    either model; padded queries (attention_mask 0) do not count.
    """
    if not layer_map:
        raise ValueError("layer_map is empty")
    queries = attention_mask.to(student_attentions[0].dtype)
    pair_losses = []
    for student_index, teacher_index in layer_map:
        student_map = student_attentions[student_index].mean(dim=1)
        teacher_map = teacher_attentions[teacher_index].detach().mean(dim=1)
        if student_map.shape != teacher_map.shape:
            raise ValueError(f"attention maps differ in shape ({tuple(student_map.shape)} vs "
                             f"{tuple(teacher_map.shape)}): tokenize both models identically")
        per_query = F.kl_div(student_map.clamp_min(PROBABILITY_FLOOR).log(), teacher_map, reduction="none").sum(dim=-1)
        pair_losses.append((per_query * queries).sum() / queries.sum())
    return torch.stack(pair_losses).mean()


def kept_attention_map(layers: Sequence[int]) -> list[tuple[int, int]]:
    """Attention layer map for a student built from teacher layers ``layers``: student layer k pairs with layers[k]."""
    return list(enumerate(layers))


def kept_layer_map(layers: Sequence[int]) -> list[tuple[int, int]]:
    """Layer map for a student built from teacher layers ``layers`` (0-based, as in StudentInfo.layers).

    Embeddings pair with embeddings; student layer k+1 pairs with teacher layer layers[k] + 1.
    """
    return [(0, 0)] + [(position + 1, layer + 1) for position, layer in enumerate(layers)]


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """Layer map spreading student layers evenly over the teacher's (last pairs with last, as in TinyBERT)."""
    if not 0 < num_student_layers <= num_teacher_layers:
        raise ValueError(f"need 0 < student layers ({num_student_layers}) <= teacher layers ({num_teacher_layers})")
    step = num_teacher_layers / num_student_layers
    return [(0, 0)] + [(layer, round(layer * step)) for layer in range(1, num_student_layers + 1)]
