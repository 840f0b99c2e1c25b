"""Properties of the distillation, hidden-state and attention-map losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from polydistill.model.losses import (
    IGNORE_LABEL,
    HiddenProjector,
    attention_map_loss,
    distillation_loss,
    hidden_state_loss,
    kept_attention_map,
    kept_layer_map,
    uniform_layer_map,
)

torch.set_num_threads(1)

temperatures = st.floats(min_value=0.5, max_value=10.0)
alphas = st.floats(min_value=0.0, max_value=1.0)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def random_batch(seed: int, batch: int = 6, classes: int = 3, scale: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * scale
    teacher = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return student, teacher, labels


def kd_gradient(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    student = student.clone().requires_grad_(True)
    labels = torch.zeros(student.shape[0], dtype=torch.long)
    distillation_loss(student, teacher, labels, alpha=1.0, temperature=temperature).total.backward()
    return student.grad


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures, alpha=alphas)
def test_kd_term_is_zero_when_logits_match(seed, temperature, alpha):
    student, _, labels = random_batch(seed)
    parts = distillation_loss(student, student.clone(), labels, alpha, temperature)
    assert parts.distillation.item() == pytest.approx(0.0, abs=1e-12)
    assert parts.total.item() == pytest.approx((1 - alpha) * F.cross_entropy(student, labels).item(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures)
def test_alpha_zero_is_plain_cross_entropy(seed, temperature):
    student, teacher, labels = random_batch(seed)
    parts = distillation_loss(student, teacher, labels, alpha=0.0, temperature=temperature)
    torch.testing.assert_close(parts.total, F.cross_entropy(student, labels), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures, alpha=alphas)
def test_total_is_weighted_sum_of_parts_and_kd_is_t_squared_kl(seed, temperature, alpha):
    student, teacher, labels = random_batch(seed)
    parts = distillation_loss(student, teacher, labels, alpha, temperature)
    teacher_probs = torch.softmax(teacher / temperature, dim=-1)
    kl_per_example = (teacher_probs * (teacher_probs.log() - torch.log_softmax(student / temperature, -1))).sum(-1)
    assert parts.distillation.item() == pytest.approx(temperature**2 * kl_per_example.mean().item(), rel=1e-9)
    assert parts.distillation.item() > 0
    expected_total = alpha * parts.distillation + (1 - alpha) * parts.cross_entropy
    assert parts.total.item() == pytest.approx(expected_total.item(), rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures, alpha=alphas, unlabelled=st.lists(st.booleans(), min_size=6, max_size=6))
def test_rows_without_a_label_learn_from_the_teacher_alone(seed, temperature, alpha, unlabelled):
    student, teacher, labels = random_batch(seed)
    mask = torch.tensor(unlabelled)
    parts = distillation_loss(student, teacher, labels.masked_fill(mask, IGNORE_LABEL), alpha, temperature)
    per_row = [distillation_loss(student[i:i + 1], teacher[i:i + 1], labels[i:i + 1], 1.0 if mask[i] else alpha,
                                 temperature).total for i in range(6)]
    assert parts.total.item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-9, abs=1e-12)
    labelled = ~mask
    expected_ce = F.cross_entropy(student[labelled], labels[labelled]).item() if labelled.any() else 0.0
    assert parts.cross_entropy.item() == pytest.approx(expected_ce, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures)
def test_kd_gradient_is_t_over_n_times_probability_gap(seed, temperature):
    """d/ds [T² KL_batchmean] = (T / N) * (softmax(s/T) - softmax(t/T)), exactly."""
    student, teacher, _ = random_batch(seed)
    gradient = kd_gradient(student, teacher, temperature)
    gap = torch.softmax(student / temperature, -1) - torch.softmax(teacher / temperature, -1)
    torch.testing.assert_close(gradient, temperature / student.shape[0] * gap, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_t_squared_keeps_kd_gradient_scale_across_temperatures(seed):
    """For near-equal logits (teacher near uniform) the gradient tends to (δ - mean δ) / (N K), free of T.

    Linearising softmax around the uniform distribution gives (T/N) * (1/K)(δ/T - mean(δ/T)): T cancels.
    Without the T² factor the gradient at T=4 would be 16 times smaller than at T=1.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, classes = 8, 5
    teacher = 1e-4 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    delta = 1e-3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    student = teacher + delta
    linearised = (delta - delta.mean(-1, keepdim=True)) / (batch * classes)
    gradients = {t: kd_gradient(student, teacher, t) for t in (1.0, 4.0)}
    for gradient in gradients.values():
        assert ((gradient - linearised).norm() / linearised.norm()).item() < 5e-3
    ratio = gradients[1.0].norm() / gradients[4.0].norm()
    assert ratio.item() == pytest.approx(1.0, abs=5e-3)


def test_mismatched_label_sets_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), 0.5, 2.0)


def hidden_states(seed: int, layers: int = 3, batch: int = 2, length: int = 5, width: int = 4):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, width, generator=generator) for _ in range(layers)]


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_hidden_loss_is_zero_for_identical_states(seed):
    states = hidden_states(seed)
    mask = torch.ones(2, 5, dtype=torch.long)
    loss = hidden_state_loss(states, [s.clone() for s in states], [(0, 0), (1, 1), (2, 2)], None, mask)
    assert loss.item() == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_hidden_loss_ignores_padded_positions(seed):
    student, teacher = hidden_states(seed), hidden_states(seed + 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    layer_map = [(0, 0), (2, 1)]
    loss = hidden_state_loss(student, teacher, layer_map, None, mask)
    changed_padding = [s.clone() for s in student]
    for state in changed_padding:
        state[mask == 0] = 1e6
    assert hidden_state_loss(changed_padding, teacher, layer_map, None, mask).item() == pytest.approx(loss.item())
    real = mask.bool()
    expected = sum(F.mse_loss(student[s][real], teacher[t][real]) for s, t in layer_map) / len(layer_map)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_projector_maps_student_width_to_teacher_width_and_learns():
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 3, requires_grad=True) for _ in range(2)]
    teacher = hidden_states(1, layers=3, width=8)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    layer_map = [(0, 0), (1, 2)]
    with pytest.raises(ValueError, match="widths differ"):
        hidden_state_loss(student, teacher, layer_map, None, mask)
    projector = HiddenProjector(len(layer_map), student_width=3, teacher_width=8)
    loss = hidden_state_loss(student, teacher, layer_map, projector, mask)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert student[1].grad is not None


def attention_maps(seed: int, mask: torch.Tensor, layers: int = 2, heads: int = 2) -> list[torch.Tensor]:
    """Random attention probabilities (batch, heads, query, key) with no weight on padded keys, as a model gives."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = mask.shape
    scores = torch.randn(layers, batch, heads, length, length, generator=generator, dtype=torch.float64) * 3
    scores = scores.masked_fill(mask[None, :, None, None, :] == 0, torch.finfo(torch.float64).min)
    return list(scores.softmax(dim=-1))


PADDED_MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_attention_loss_is_zero_when_head_averages_agree_and_positive_otherwise(seed):
    teacher = attention_maps(seed, PADDED_MASK, heads=4)
    # a student with 2 heads, each the mean of two teacher heads: the same head-averaged map
    student = [torch.stack([layer[:, :2].mean(dim=1), layer[:, 2:].mean(dim=1)], dim=1) for layer in teacher]
    pairs = [(0, 0), (1, 1)]
    assert attention_map_loss(student, teacher, pairs, PADDED_MASK).item() == pytest.approx(0.0, abs=1e-12)
    other = attention_maps(seed + 1, PADDED_MASK)
    assert attention_map_loss(other, teacher, pairs, PADDED_MASK).item() > 0


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_attention_loss_is_the_mean_kl_over_real_queries_and_ignores_padded_ones(seed):
    student, teacher = attention_maps(seed, PADDED_MASK), attention_maps(seed + 1, PADDED_MASK, layers=3)
    pairs = [(0, 2), (1, 0)]
    loss = attention_map_loss(student, teacher, pairs, PADDED_MASK)
    real = PADDED_MASK.bool()
    expected = 0.0
    for s, t in pairs:
        p, q = teacher[t].mean(dim=1)[real], student[s].mean(dim=1)[real]  # (real queries, keys)
        terms = torch.where(p > 0, p * (p.log() - q.clamp_min(1e-12).log()), torch.zeros_like(p))
        expected += terms.sum(dim=-1).mean().item() / len(pairs)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    changed = [layer.clone() for layer in student]
    for layer in changed:
        layer[PADDED_MASK[:, None, :, None].expand_as(layer) == 0] = 0.5  # padded query rows: anything
    assert attention_map_loss(changed, teacher, pairs, PADDED_MASK).item() == pytest.approx(loss.item(), rel=1e-12)


def test_attention_loss_trains_the_student_maps_and_refuses_other_lengths():
    student = [layer.clone().requires_grad_(True) for layer in attention_maps(0, PADDED_MASK)]
    teacher = attention_maps(1, PADDED_MASK)
    attention_map_loss(student, teacher, [(0, 0), (1, 1)], PADDED_MASK).backward()
    assert all(layer.grad is not None and layer.grad.abs().sum() > 0 for layer in student)
    longer = attention_maps(2, torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in shape"):
        attention_map_loss(longer, teacher, [(0, 0)], PADDED_MASK)
    with pytest.raises(ValueError, match="empty"):
        attention_map_loss(student, teacher, [], PADDED_MASK)


def test_layer_maps():
    assert kept_layer_map([0, 4, 8, 11]) == [(0, 0), (1, 1), (2, 5), (3, 9), (4, 12)]
    assert kept_attention_map([0, 4, 8, 11]) == [(0, 0), (1, 4), (2, 8), (3, 11)]
    assert uniform_layer_map(4, 12) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert uniform_layer_map(12, 12) == [(i, i) for i in range(13)]
    with pytest.raises(ValueError):
        uniform_layer_map(5, 4)


def labels_with_unlabelled(labels: torch.Tensor) -> torch.Tensor:
    """The batch's labels with every third row unlabelled (IGNORE_LABEL), as in a transfer set."""
    return torch.where(torch.arange(len(labels)) % 3 == 2, torch.full_like(labels, IGNORE_LABEL), labels)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures, alpha=alphas, weight=st.integers(min_value=1, max_value=4),
       row=st.integers(min_value=0, max_value=5))
def test_a_row_of_weight_k_in_the_kd_loss_counts_as_k_copies(seed, temperature, alpha, weight, row):
    student, teacher, labels = random_batch(seed)
    labels = labels_with_unlabelled(labels)
    weights = torch.where(torch.arange(6) == row, float(weight), 1.0).double()
    repeated = torch.tensor(list(range(6)) + [row] * (weight - 1))
    weighted_student, repeated_student = student.clone().requires_grad_(True), student.clone().requires_grad_(True)
    distillation_loss(weighted_student, teacher, labels, alpha, temperature, weights).total.backward()
    distillation_loss(repeated_student[repeated], teacher[repeated], labels[repeated], alpha, temperature
                      ).total.backward()
    torch.testing.assert_close(weighted_student.grad, repeated_student.grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, temperature=temperatures, alpha=alphas)
def test_all_ones_weights_give_the_unweighted_kd_loss(seed, temperature, alpha):
    student, teacher, labels = random_batch(seed)
    labels = labels_with_unlabelled(labels)
    plain = distillation_loss(student, teacher, labels, alpha, temperature)
    ones = distillation_loss(student, teacher, labels, alpha, temperature, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(ones.total, plain.total, rtol=1e-12, atol=1e-12)
