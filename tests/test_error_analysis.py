"""The evaluation report's error analysis: counts that add up, the right rows in each table."""

from __future__ import annotations

import numpy as np
import pytest

from polydistill.model.error_analysis import ErrorSettings, error_analysis, error_analysis_markdown

LABELS = ["negative", "positive"]


def probabilities(positive: list[float]) -> np.ndarray:
    values = np.array(positive)
    return np.stack([1 - values, values], axis=1)


def test_errors_and_disagreements_are_counted_and_ranked() -> None:
    texts = ["good", "bad", "awful | long " * 20, "fine", "meh"]
    gold = np.array([1, 0, 0, 1, 0])
    student = probabilities([0.9, 0.3, 0.95, 0.4, 0.6])   # wrong on rows 2 (p .95), 3 (p .6), 4 (p .6)
    teacher = probabilities([0.8, 0.2, 0.7, 0.7, 0.45])   # wrong on row 2 only
    analysis = error_analysis(texts, gold, student, teacher, LABELS, ErrorSettings(examples=2, text_chars=20))
    assert analysis["student_errors"] == 3 and analysis["teacher_also_wrong"] == 1
    assert analysis["errors_by_gold"] == {"negative": 2, "positive": 1}
    assert analysis["disagreements"] == 2
    assert analysis["disagreements_teacher_right"] == 2 and analysis["disagreements_student_right"] == 0
    confident = analysis["most_confident_errors"]
    assert [entry["student_probability"] for entry in confident] == [0.95, 0.6]
    assert confident[0]["text"] == "awful | long awful …" and len(confident[0]["text"]) == 20
    assert confident[0]["teacher_gold_probability"] == pytest.approx(0.3)
    report = error_analysis_markdown("en", analysis)
    assert "wrong on 3 of 5 test texts (2 negative, 1 positive by gold label)" in report
    assert "awful \\| long" in report and report.count("\n| ") == 2 * (1 + 2)  # two tables: header + 2 rows


def test_a_perfect_student_has_empty_tables() -> None:
    gold = np.array([0, 1])
    perfect = probabilities([0.1, 0.9])
    analysis = error_analysis(["a", "b"], gold, perfect, perfect, LABELS, ErrorSettings(5, 100))
    assert analysis["student_errors"] == analysis["disagreements"] == 0
    assert "|" not in error_analysis_markdown("en", analysis)
