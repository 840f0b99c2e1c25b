"""Which errors a student makes: its most confident mistakes, and where it and its teacher disagree.

Read off the evaluate stage's test-split probabilities (the student as served, the teacher it learned from); written
into metrics/evaluate/<lang>.json and, per language, the "Error analysis" section of reports/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ErrorSettings:
    """How much of the analysis the report shows (params.yaml evaluate)."""

    examples: int      # rows per table
    text_chars: int    # a text longer than this is cut (with an ellipsis)


def error_analysis(texts: list[str], gold: np.ndarray, student: np.ndarray, teacher: np.ndarray, labels: list[str],
                   settings: ErrorSettings) -> dict[str, Any]:
    """Counts of student errors and student–teacher disagreements, with the most telling rows of each."""
    student_label, teacher_label = student.argmax(axis=1), teacher.argmax(axis=1)
    wrong = np.flatnonzero(student_label != gold)
    disagree = np.flatnonzero(student_label != teacher_label)
    confident_errors = wrong[np.argsort(-student.max(axis=1)[wrong], kind="stable")][:settings.examples]
    sharpest = disagree[np.argsort(-np.abs(student[disagree].max(axis=1) - teacher[disagree].max(axis=1)),
                                   kind="stable")][:settings.examples]

    def row(index: int) -> dict[str, Any]:
        text = texts[index]
        return {"text": text if len(text) <= settings.text_chars else text[:settings.text_chars - 1] + "…",
                "gold": labels[gold[index]],
                "student": labels[student_label[index]], "student_probability": float(student[index].max()),
                "teacher": labels[teacher_label[index]], "teacher_probability": float(teacher[index].max()),
                "teacher_gold_probability": float(teacher[index, gold[index]])}

    return {
        "rows": len(texts),
        "student_errors": int(len(wrong)),
        "teacher_also_wrong": int(np.sum(teacher_label[wrong] != gold[wrong])),
        "errors_by_gold": {labels[label]: int(np.sum(gold[wrong] == label)) for label in range(len(labels))},
        "disagreements": int(len(disagree)),
        "disagreements_student_right": int(np.sum(student_label[disagree] == gold[disagree])),
        "disagreements_teacher_right": int(np.sum(teacher_label[disagree] == gold[disagree])),
        "most_confident_errors": [row(index) for index in confident_errors],
        "sharpest_disagreements": [row(index) for index in sharpest],
    }


def error_analysis_markdown(lang: str, analysis: dict[str, Any]) -> str:
    """One language's part of the report's error analysis section."""
    errors, disagreements = analysis["student_errors"], analysis["disagreements"]
    lines = [f"### {lang}",
             f"The KD student is wrong on {errors} of {analysis['rows']} test texts "
             f"({', '.join(f'{count} {label}' for label, count in analysis['errors_by_gold'].items())} by gold label); "
             f"the teacher is wrong on {analysis['teacher_also_wrong']} of those too. Student and teacher disagree on "
             f"{disagreements} texts: the student is right on {analysis['disagreements_student_right']}, the "
             f"teacher on {analysis['disagreements_teacher_right']}.", ""]
    for title, key in (("Most confident student errors", "most_confident_errors"),
                       ("Sharpest student–teacher disagreements", "sharpest_disagreements")):
        if analysis[key]:
            lines += [f"{title}:", "", "| text | gold | student (p) | teacher (p) | teacher p(gold) |",
                      "|---|---|---|---|---|"]
            lines += [f"| {cell(entry['text'])} | {entry['gold']} | {entry['student']} "
                      f"({entry['student_probability']:.2f}) | {entry['teacher']} ({entry['teacher_probability']:.2f})"
                      f" | {entry['teacher_gold_probability']:.2f} |" for entry in analysis[key]]
            lines.append("")
    return "\n".join(lines)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")
