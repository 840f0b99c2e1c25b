"""Fold teachers: twins of the transformer teacher, so that it never scores a row it was fine-tuned on.

The teacher is fine-tuned on the balanced teacher set, and the students' transfer set holds those same labelled rows
(and augmented copies of them): scored by the teacher, they would teach its memorised labels back. Twin k is
fine-tuned exactly as the teacher is (same pretrained encoder, settings and validation rows) on the teacher-set rows
outside fold k (`fold_of` their id), so every row the teacher saw has one twin that never saw it. The soft_labels
stage scores a transfer row whose origin the teacher saw with that twin, every other row with the teacher.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from polydistill.data.folds import fold_of
from polydistill.model.teacher import TEACHER_CODE, fine_tune
from polydistill.model.training import TrainSettings, run_key

MANIFEST = "manifest.json"
FOLD_TEACHER_CODE = (*TEACHER_CODE, Path(__file__))


@dataclass(frozen=True)
class FoldTeachers:
    """The twins in a fold_teachers folder and the train ids the teacher saw."""

    directory: Path
    folds: int
    seen_ids: frozenset[str]

    @classmethod
    def load(cls, directory: Path) -> FoldTeachers:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        return cls(directory, manifest["folds"], frozenset(manifest["seen_ids"]))

    def twin_for(self, origin_id: object) -> Path | None:
        """The twin that never saw `origin_id`, or None when the teacher itself never saw it (no origin, an
        unlabelled text, a train row outside the teacher set, no folds)."""
        if not self.folds or not isinstance(origin_id, str) or origin_id not in self.seen_ids:
            return None
        return fold_teacher_dir(self.directory, fold_of(origin_id, self.folds))


def fold_teacher_dir(directory: Path, fold: int) -> Path:
    return directory / f"fold-{fold}"


def check_folds(folds: int) -> None:
    if folds == 1 or folds < 0:
        raise ValueError(f"fold_teachers.folds is {folds}: use 0 (no twins) or at least 2")


def train_fold_teachers(pretrained_dir: Path, teacher_set_path: Path, validation_path: Path, output_dir: Path,
                        metrics_path: Path, work_root: Path, settings: TrainSettings, labels: list[str],
                        folds: int) -> dict[str, Any]:
    """Fine-tune `folds` twins of the teacher (settings: the teacher's) into output_dir/fold-<k>, with a
    manifest of the folds and the ids the teacher saw; write and return their metrics. folds 0 writes the manifest
    alone: the teacher then scores its own training rows."""
    check_folds(folds)
    if output_dir.exists():
        shutil.rmtree(output_dir)  # no twin of an earlier fold count stays behind
    teacher_set = pd.read_parquet(teacher_set_path)
    validation = pd.read_parquet(validation_path)
    row_folds = teacher_set["id"].map(lambda row_id: fold_of(row_id, folds)) if folds else None
    twins = []
    for fold in range(folds):
        frame = teacher_set[(row_folds != fold).to_numpy()].reset_index(drop=True)
        key = run_key({**asdict(settings), "labels": labels, "fold": fold, "folds": folds},
                      [pretrained_dir, frame, validation_path], FOLD_TEACHER_CODE)
        metrics = fine_tune(pretrained_dir, frame, validation,
                            fold_teacher_dir(output_dir, fold), work_root / f"fold-teacher-{key}", settings, labels,
                            task=f"fold teacher {fold + 1}/{folds}")
        twins.append({"fold": fold, **{name: metrics[name] for name in
                                       ("train_rows", "best_step", "steps", "validation_macro_f1", "seconds")}})
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"folds": folds, "fold_rule": "sha256(row id) mod folds (polydistill.data.folds.fold_of)",
                "seen_ids": sorted(teacher_set["id"].unique())}
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    report = {"folds": folds, "teacher_set_rows": len(teacher_set), "twins": twins}
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
