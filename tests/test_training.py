"""The shared training loop: bucketing with dynamic padding, early stopping, and exact resume after interruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st
from safetensors import safe_open
from tiny_models import TINY_POSITIONS
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from polydistill.model.distill import STUDENT_CODE
from polydistill.model.teacher import TEACHER_CODE
from polydistill.model.training import (
    EncodedSet,
    TrainSettings,
    bucketed_batches,
    collate,
    cross_entropy_loss,
    encode_texts,
    per_language_log_loss,
    per_language_macro_f1,
    predict_logits,
    rows_per_language,
    run_key,
    train_classifier,
    validation_logits,
)

PAD = 1


def tiny_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2, pad_token_id=PAD)
    return BertForSequenceClassification(config)


def toy_set(rows: int, seed: int) -> EncodedSet:
    """Label 1 texts use tokens 10-34, label 0 texts tokens 35-59: learnable by a tiny model."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(rows):
        label = int(rng.random() < 0.5)
        low = 10 if label else 35
        body = rng.integers(low, low + 25, size=rng.integers(3, 30)).tolist()
        ids.append([0, *body, 2])
        labels.append(label)
    langs = np.array(["en", "zh"] * (rows // 2) + ["en"] * (rows % 2))
    return EncodedSet(ids, np.array(labels), langs)


def settings(**overrides) -> TrainSettings:
    base = dict(max_length=64, batch_size=8, learning_rate=3e-3, warmup_ratio=0.1, epochs=3, weight_decay=0.01,
                eval_every=10, patience=100, checkpoint_every=5, seed=5, bucket_batches=4)
    return TrainSettings(**{**base, **overrides})


def test_a_max_length_beyond_the_models_positions_is_refused(tiny_teacher: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    long_text = "good film " * TINY_POSITIONS
    assert len(encode_texts(tokenizer, [long_text], TINY_POSITIONS)[0]) == TINY_POSITIONS
    with pytest.raises(ValueError, match=f"max_length {TINY_POSITIONS + 1} exceeds the {TINY_POSITIONS} positions"):
        encode_texts(tokenizer, [long_text], TINY_POSITIONS + 1)


def test_buckets_cover_every_row_once_and_pad_little() -> None:
    lengths = np.random.default_rng(0).integers(2, 200, size=1000)
    batches = bucketed_batches(lengths, batch_size=16, bucket_batches=10, rng=np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    padded = sum(len(batch) * lengths[batch].max() for batch in batches)
    assert padded < 1.1 * lengths.sum(), "length bucketing should keep padding under 10%"


def test_collate_pads_to_the_longest_in_the_batch() -> None:
    data = toy_set(10, 0)
    batch = collate(data, np.array([0, 3]), PAD)
    assert batch.input_ids.shape[1] == max(len(data.input_ids[0]), len(data.input_ids[3]))
    assert int(batch.attention_mask.sum()) == len(data.input_ids[0]) + len(data.input_ids[3])


def test_training_learns_and_keeps_the_best_model(tmp_path: Path) -> None:
    model = tiny_model()
    state = train_classifier(model, toy_set(160, 1), toy_set(60, 2), settings(), tmp_path, PAD)
    assert state.best_score > 0.8
    assert (tmp_path / "best/model.safetensors").exists()
    assert state.history[-1]["step"] == 60


def test_the_best_folder_holds_the_evaluation_with_the_best_validation_score(tmp_path: Path) -> None:
    validation = toy_set(60, 2)
    state = train_classifier(tiny_model(), toy_set(160, 1), validation, settings(eval_every=3), tmp_path, PAD)
    means = [entry["validation_macro_f1_mean"] for entry in state.history]
    best = int(np.argmax(means))  # the first evaluation reaching the maximum: later ties do not replace it
    assert state.best_step == state.history[best]["step"] and state.best_score == pytest.approx(means[best], abs=1e-5)
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "best").eval()
    predictions = predict_logits(saved, validation, PAD, 16).argmax(axis=1)
    assert per_language_macro_f1(validation.labels, predictions, validation.langs)["mean"] == \
        pytest.approx(means[best], abs=1e-5)


def test_the_log_loss_rule_keeps_the_evaluation_with_the_lowest_validation_log_loss(tmp_path: Path) -> None:
    validation = toy_set(60, 2)
    state = train_classifier(tiny_model(), toy_set(160, 1), validation, settings(eval_every=3, select_by="log_loss"),
                             tmp_path, PAD)
    losses = [entry["validation_log_loss_mean"] for entry in state.history]
    assert state.best_step == state.history[int(np.argmin(losses))]["step"]
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "best").eval()
    logits = predict_logits(saved, validation, PAD, 16)
    assert per_language_log_loss(validation.labels, logits, validation.langs)["mean"] == \
        pytest.approx(min(losses), abs=1e-4)


def test_the_last_rule_never_stops_early_and_keeps_the_last_step(tmp_path: Path) -> None:
    state = train_classifier(tiny_model(), toy_set(160, 1), toy_set(60, 2),
                             settings(learning_rate=0.0, patience=2, eval_every=5, select_by="last"), tmp_path, PAD)
    assert state.step == 60 and state.best_step == 60, "a flat score would stop macro_f1 at step 15"
    assert state.best_evaluation() == state.history[-1]


def test_an_unknown_selection_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="select_by"):
        settings(select_by="accuracy")


def test_every_evaluation_keeps_its_validation_logits(tmp_path: Path) -> None:
    validation = toy_set(60, 2)
    work_dir = tmp_path / "run"  # created by the first evaluation, which comes before the first checkpoint
    state = train_classifier(tiny_model(), toy_set(160, 1), validation, settings(eval_every=7, checkpoint_every=50),
                             work_dir, PAD)
    curve, labels, langs = validation_logits(work_dir)
    assert list(curve) == [entry["step"] for entry in state.history] == [7, 14, 21, 28, 35, 42, 49, 56, 60]
    assert np.array_equal(labels, validation.labels) and np.array_equal(langs, validation.langs)
    for entry in state.history:
        scores = per_language_macro_f1(labels, curve[entry["step"]].argmax(axis=1), langs)
        assert scores["mean"] == pytest.approx(entry["validation_macro_f1_mean"], abs=1e-5)


def test_log_loss_per_language_is_the_mean_negative_log_probability_of_the_gold_label() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.5]])
    labels, langs = np.array([0, 0, 1, 1]), np.array(["en", "en", "zh", "zh"])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    gold = -np.log(probabilities[np.arange(4), labels])
    losses = per_language_log_loss(labels, logits, langs)
    assert losses["en"] == pytest.approx(gold[:2].mean()) and losses["zh"] == pytest.approx(gold[2:].mean())
    assert losses["mean"] == pytest.approx((gold[:2].mean() + gold[2:].mean()) / 2)


def test_early_stopping_ends_after_patience(tmp_path: Path) -> None:
    state = train_classifier(tiny_model(), toy_set(160, 1), toy_set(60, 2),
                             settings(learning_rate=0.0, patience=2, eval_every=5), tmp_path, PAD)
    assert state.step == 15 and state.evals_without_improvement == 2


def test_max_steps_caps_the_run_and_its_schedule(tmp_path: Path) -> None:
    """3 epochs of 160 rows are 60 steps; a cap of 25 ends the run there, and the run's total (what the learning-rate
    schedule and the progress line span) is 25."""
    totals: list[int] = []

    def record_total(step: int, total: int, entry: dict) -> None:
        totals.append(total)

    state = train_classifier(tiny_model(), toy_set(160, 1), toy_set(60, 2), settings(max_steps=25, eval_every=5),
                             tmp_path, PAD, progress=record_total)
    assert state.step == 25 and [entry["step"] for entry in state.history] == [5, 10, 15, 20, 25]
    assert set(totals) == {25}
    uncapped = train_classifier(tiny_model(), toy_set(160, 1), toy_set(60, 2), settings(max_steps=1000),
                                tmp_path / "uncapped", PAD)
    assert uncapped.step == 60


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("freeze", [False, True], ids=["all-trained", "frozen-word-embeddings"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, freeze: bool) -> None:
    train, validation, run_settings = toy_set(160, 1), toy_set(60, 2), settings(freeze_word_embeddings=freeze)
    uninterrupted = tiny_model()
    train_classifier(uninterrupted, train, validation, run_settings, tmp_path / "straight", PAD)

    def kill_at_step_30(step: int, total: int, entry: dict) -> None:
        if step == 30:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_classifier(tiny_model(), train, validation, run_settings, tmp_path / "resumed", PAD,
                         progress=kill_at_step_30)
    resumed = tiny_model(seed=99)  # a fresh process would start from other random weights
    word_embeddings = "bert.embeddings.word_embeddings.weight"
    if freeze:  # ... but from the same pretrained frozen ones, which the checkpoint leaves out
        resumed.get_input_embeddings().weight.data.copy_(tiny_model().get_input_embeddings().weight)
    with safe_open(str(tmp_path / "resumed" / "checkpoint" / "model.safetensors"), "pt") as checkpoint:
        assert (word_embeddings in checkpoint.keys()) is not freeze
    state = train_classifier(resumed, train, validation, run_settings, tmp_path / "resumed", PAD)
    assert state.step == 60 and [entry["step"] for entry in state.history] == [10, 20, 30, 40, 50, 60]
    for (name, expected), actual in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)


def test_per_language_scores_include_the_mean() -> None:
    scores = per_language_macro_f1(np.array([0, 1, 0, 1]), np.array([0, 1, 1, 1]), np.array(["a", "a", "b", "b"]))
    assert scores["a"] == 1.0 and scores["mean"] == pytest.approx((1.0 + scores["b"]) / 2)


def test_rows_per_language_limits_each_language_deterministically() -> None:
    data = toy_set(100, 3)
    limited = rows_per_language(data, 20, seed=1)
    assert {lang: int((limited.langs == lang).sum()) for lang in ("en", "zh")} == {"en": 20, "zh": 20}
    assert limited.input_ids == rows_per_language(data, 20, seed=1).input_ids
    assert rows_per_language(data, 0, seed=1) is data


def gradients(model: BertForSequenceClassification, data: EncodedSet, rows: list[int]) -> list[torch.Tensor]:
    """Gradients of the training loss of one batch made of `rows` (dropout off, so the step is deterministic)."""
    model.eval()
    model.zero_grad()
    cross_entropy_loss(model, collate(data, np.array(rows), PAD))["total"].backward()
    return [parameter.grad.clone() for parameter in model.parameters() if parameter.grad is not None]


@settings_hypothesis(max_examples=15, deadline=None)
@given(weight=st.integers(min_value=1, max_value=4), row=st.integers(min_value=0, max_value=5))
def test_a_row_of_weight_k_counts_as_k_copies_of_the_row(weight: int, row: int) -> None:
    """Same one-step gradient: batch rows 0..5 with weight k on one row vs the batch with that row repeated k times."""
    model, data = tiny_model(3), toy_set(6, 2)
    weighted = EncodedSet(data.input_ids, data.labels, data.langs, weights=np.where(np.arange(6) == row, weight, 1.0))
    repeated = list(range(6)) + [row] * (weight - 1)
    for got, expected in zip(gradients(model, weighted, list(range(6))), gradients(model, data, repeated),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_all_ones_weights_give_the_unweighted_loss() -> None:
    model, data = tiny_model(4), toy_set(8, 3)
    ones = EncodedSet(data.input_ids, data.labels, data.langs, weights=np.ones(8))
    model.eval()
    rows = np.arange(8)
    plain = cross_entropy_loss(model, collate(data, rows, PAD))["total"]
    weighted = cross_entropy_loss(model, collate(ones, rows, PAD))["total"]
    torch.testing.assert_close(weighted, plain)
    assert collate(ones, rows[:3], PAD).weights.tolist() == [1.0, 1.0, 1.0]
    assert ones.subset(np.array([2, 0])).weights.tolist() == [1.0, 1.0]


def test_the_run_key_changes_with_the_code_and_every_input(tmp_path: Path) -> None:
    """A finished checkpoint is never reused after an edit of the training code or a change of any input."""
    code = tmp_path / "training.py"
    code.write_text("LOSS = 'cross entropy'\n", encoding="utf-8")
    rows = pd.DataFrame({"text": ["a", "b"], "label": ["positive", "negative"]})
    logits = np.zeros((2, 2), dtype=np.float32)
    key = run_key({"seed": 1}, [rows, logits], [code])
    assert run_key({"seed": 1}, [rows.copy(), logits.copy()], [code]) == key
    assert run_key({"seed": 2}, [rows, logits], [code]) != key
    assert run_key({"seed": 1}, [rows.assign(label=["positive", "positive"]), logits], [code]) != key
    assert run_key({"seed": 1}, [rows, logits + 1], [code]) != key
    code.write_text("LOSS = 'weighted cross entropy'\n", encoding="utf-8")
    assert run_key({"seed": 1}, [rows, logits], [code]) != key


def test_run_keys_cover_the_training_code_of_teacher_and_students() -> None:
    names = {path.name for path in STUDENT_CODE}
    assert {path.name for path in TEACHER_CODE} == {"teacher.py", "training.py", "distributed.py"}
    assert {"training.py", "losses.py", "distill.py", "student.py", "narrow.py"} <= names
    assert all(path.is_file() for path in (*STUDENT_CODE, *TEACHER_CODE))
