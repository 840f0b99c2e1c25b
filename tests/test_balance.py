"""Properties of the temperature sampler: natural and uniform shares, the repeat cap, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from polydistill.data.balance import (
    LossWeightSettings,
    allocate,
    class_row_weights,
    derived_weights,
    row_weights,
    sample_balanced,
    share_report,
    temperature_shares,
)

language_counts = st.dictionaries(
    keys=st.sampled_from(["en", "es", "id", "sl", "zh", "ja", "ar"]),
    values=st.integers(min_value=1, max_value=5000),
    min_size=1,
    max_size=7,
)


def corpus(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": f"{lang}-{i}", "lang": lang, "label": "positive" if i % 3 else "negative", "text": f"{lang} {i}"}
            for lang, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


@given(counts=language_counts, total=st.integers(min_value=1, max_value=20000))
def test_alpha_one_reproduces_natural_shares(counts: dict[str, int], total: int) -> None:
    total = min(total, sum(counts.values()))
    sizes = allocate(counts, alpha=1.0, total=total, max_repeats=1)
    grand = sum(counts.values())
    for lang, n in counts.items():
        assert abs(sizes[lang] - total * n / grand) < 1.0


@given(counts=language_counts, total=st.integers(min_value=1, max_value=20000),
       max_repeats=st.integers(min_value=1, max_value=5))
@example(counts={"en": 1, "es": 1}, total=1, max_repeats=1)  # a half share each: one rounds up and meets its cap
def test_alpha_zero_gives_equal_shares_up_to_the_cap(counts: dict[str, int], total: int, max_repeats: int) -> None:
    sizes = allocate(counts, alpha=0.0, total=total, max_repeats=max_repeats)
    capped = [sizes[lang] for lang, n in counts.items() if sizes[lang] == n * max_repeats]
    uncapped = [sizes[lang] for lang, n in counts.items() if sizes[lang] < n * max_repeats]
    if uncapped:
        # Uncapped languages share the water level, rounded: they differ by at most one example. A capped language
        # was capped at or below that level, so it exceeds no uncapped language by more than the rounding unit.
        assert max(uncapped) - min(uncapped) <= 1
        assert all(size <= min(uncapped) + 1 for size in capped)


@given(counts=language_counts, total=st.integers(min_value=1, max_value=40000),
       alpha=st.floats(min_value=0.0, max_value=1.0), max_repeats=st.integers(min_value=1, max_value=5))
def test_cap_never_exceeded_and_total_kept(counts: dict[str, int], total: int, alpha: float,
                                           max_repeats: int) -> None:
    sizes = allocate(counts, alpha=alpha, total=total, max_repeats=max_repeats)
    assert all(sizes[lang] <= n * max_repeats for lang, n in counts.items())
    assert sum(sizes.values()) == min(total, max_repeats * sum(counts.values()))


@settings(max_examples=30, deadline=None)
@given(counts=st.dictionaries(st.sampled_from(["en", "sl", "zh"]), st.integers(2, 300), min_size=2, max_size=3),
       alpha=st.floats(min_value=0.0, max_value=1.0), max_repeats=st.integers(min_value=1, max_value=4),
       seed=st.integers(min_value=0, max_value=2**31))
def test_sample_respects_cap_keeps_every_language_and_is_deterministic(
        counts: dict[str, int], alpha: float, max_repeats: int, seed: int) -> None:
    frame = corpus(counts)
    total = len(frame) // 2 + len(counts)
    first = sample_balanced(frame, total, alpha, max_repeats, class_balance=False, seed=seed)
    second = sample_balanced(frame, total, alpha, max_repeats, class_balance=False, seed=seed)
    pd.testing.assert_frame_equal(first, second)
    assert first.groupby("id").size().max() <= max_repeats
    assert set(first["lang"]) == set(counts)


def test_uniform_sampling_equalises_languages_and_reports_shares() -> None:
    frame = corpus({"en": 1000, "sl": 100, "zh": 400})
    sample = sample_balanced(frame, 600, alpha=0.0, max_repeats=3, class_balance=False, seed=1)
    assert sample.groupby("lang").size().to_dict() == {"en": 200, "sl": 200, "zh": 200}
    report = share_report(frame, sample, alpha=0.0)
    assert report["sl"]["share_before"] == pytest.approx(100 / 1500, abs=1e-4)
    assert report["sl"]["share_after"] == pytest.approx(1 / 3, abs=1e-4)
    assert report["sl"]["max_repeats_seen"] == 2


def test_capped_language_hands_its_share_to_the_others() -> None:
    sizes = allocate({"en": 1000, "sl": 10}, alpha=0.0, total=400, max_repeats=3)
    assert sizes == {"en": 370, "sl": 30}


def test_class_balance_equalises_labels_within_a_language() -> None:
    frame = corpus({"en": 300})  # one third negative
    sample = sample_balanced(frame, 200, alpha=1.0, max_repeats=2, class_balance=True, seed=0)
    assert sample.groupby("label").size().to_dict() == {"negative": 100, "positive": 100}


def test_shares_follow_the_temperature_formula() -> None:
    shares = temperature_shares({"a": 100, "b": 1}, alpha=0.5)
    assert shares["a"] / shares["b"] == pytest.approx(np.sqrt(100))


def test_derived_weights_follow_their_formulas() -> None:
    counts = {"en": 400, "es": 25}
    assert derived_weights(counts, "inverse", 0.9) == {"en": 1 / 400, "es": 1 / 25}
    assert derived_weights(counts, "inverse_sqrt", 0.9) == pytest.approx({"en": 1 / 20, "es": 1 / 5})
    assert derived_weights(counts, "effective_number", 0.99) == pytest.approx(
        {"en": 0.01 / (1 - 0.99 ** 400), "es": 0.01 / (1 - 0.99 ** 25)})
    assert derived_weights(counts, "none", 0.9) == {"en": 1.0, "es": 1.0}
    assert derived_weights(counts, {"en": 1.0, "es": 3.0}, 0.9) == {"en": 1.0, "es": 3.0}
    with pytest.raises(ValueError, match="lack"):
        derived_weights(counts, {"en": 1.0}, 0.9)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        derived_weights(counts, "square", 0.9)


def test_a_students_class_weights_follow_the_train_counts_and_leave_unlabelled_rows_at_one() -> None:
    train = pd.Series(["negative"] * 25 + ["positive"] * 100)
    rows = pd.Series(["negative", "positive", None, "positive", np.nan, "negative"])
    weights = class_row_weights(rows, train, "inverse", 0.9)
    labelled = weights[[0, 1, 3, 5]]
    assert labelled.mean() == pytest.approx(1.0) and weights[[2, 4]].tolist() == [1.0, 1.0]
    assert weights[0] / weights[1] == pytest.approx(100 / 25) and weights[0] == weights[5]
    assert class_row_weights(rows, train, "none", 0.9).tolist() == [1.0] * 6
    explicit = class_row_weights(rows, train, {"negative": 3.0, "positive": 1.0}, 0.9)
    assert explicit[0] / explicit[1] == pytest.approx(3.0)


@settings(max_examples=25, deadline=None)
@given(counts=language_counts, alpha=st.floats(min_value=0.0, max_value=1.0),
       scheme=st.sampled_from(["inverse", "inverse_sqrt", "effective_number"]),
       classes=st.sampled_from(["none", "inverse"]))
def test_row_weights_have_mean_one_and_the_ratio_of_their_formula(counts: dict[str, int], alpha: float,
                                                                 scheme: str, classes: str) -> None:
    frame = corpus(counts)
    sample = sample_balanced(frame, len(frame) // 2 + len(counts), alpha, 3, class_balance=False, seed=0)
    settings_ = LossWeightSettings(languages=scheme, classes=classes, beta=0.999)
    weights = row_weights(sample, frame, settings_)
    assert weights.mean() == pytest.approx(1.0)
    language = derived_weights(frame.groupby("lang").size().to_dict(), scheme, 0.999)
    first, last = sample.iloc[0], sample.iloc[-1]
    class_counts = frame.groupby(["lang", "label"]).size()
    class_factor = (lambda row: 1 / class_counts[(row["lang"], row["label"])]) if classes == "inverse" else (
        lambda row: 1.0)
    expected = (language[first["lang"]] * class_factor(first)) / (language[last["lang"]] * class_factor(last))
    assert weights[0] / weights[-1] == pytest.approx(expected)


def test_the_report_states_each_languages_share_of_the_loss() -> None:
    frame = corpus({"en": 900, "sl": 100})
    sample = sample_balanced(frame, 500, alpha=1.0, max_repeats=1, class_balance=False, seed=0)
    sample["weight"] = row_weights(sample, frame, LossWeightSettings(languages="inverse"))
    report = share_report(frame, sample, alpha=1.0)
    assert report["sl"]["share_after"] == pytest.approx(0.1, abs=0.01)
    assert report["sl"]["loss_share"] == pytest.approx(0.5, abs=0.01)  # 1/n weights: every language counts the same
    assert report["sl"]["mean_loss_weight"] == pytest.approx(5.0, rel=0.1)
    unweighted = share_report(frame, sample.drop(columns="weight"), alpha=1.0)
    assert unweighted["sl"]["loss_share"] == unweighted["sl"]["share_after"]
