"""Fold teachers: a transfer row the teacher was fine-tuned on gets its soft label from the twin that never saw it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import fixture_texts
from harness import REPO_ROOT
from tiny_models import tiny_pretrained_encoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from polydistill.data.archives import sha256_of
from polydistill.data.folds import fold_of
from polydistill.model.fold_teachers import MANIFEST, FoldTeachers, train_fold_teachers
from polydistill.model.soft_labels import (
    SoftLabelMismatch,
    SoftLabelSettings,
    generate_soft_labels,
    load_soft_labels,
    teacher_fingerprint,
)
from polydistill.model.training import TrainSettings

LABELS = ["negative", "positive"]
FOLDS = 2
SETTINGS = SoftLabelSettings(ensemble=False, weight_grid=(1.0,), cross_fit_folds=3, max_length=32, batch_size=8,
                             threads=1, runtime="torch_fp32")
TEXTS = fixture_texts()


def teacher_settings() -> TrainSettings:
    settings = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))["teacher"]
    return TrainSettings.from_params({**settings, "threads": 1, "max_length": 32, "batch_size": 8, "epochs": 2,
                                      "learning_rate": 1e-3, "eval_every": 5, "checkpoint_every": 5,
                                      "eval_rows_per_language": 0, "freeze_word_embeddings": False})


def rows(prefix: str, start: int, count: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{prefix}-{i}" for i in range(count)], "text": TEXTS[start:start + count],
                         "label": [LABELS[i % 2] for i in range(count)], "lang": "en", "source": "fixture"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("folds")
    pretrained = tiny_pretrained_encoder(root / "pretrained", TEXTS, LABELS)
    train, validation, test = rows("train", 0, 60), rows("val", 60, 20), rows("test", 80, 20)
    teacher_set = pd.concat([train.iloc[:40], train.iloc[:10]], ignore_index=True)  # rows 40-59: never seen
    teacher_set.to_parquet(root / "teacher_set.parquet")
    validation.to_parquet(root / "validation.parquet")
    augmented = pd.DataFrame({"id": ["train-3~aug0", "train-45~aug1"], "text": ["augmented one", "augmented two"],
                              "label": None, "lang": "en", "source": "augmented", "origin_id": ["train-3", "train-45"]})
    unlabelled = pd.DataFrame({"id": ["unlabelled-0"], "text": [TEXTS[100]], "label": None, "lang": "en",
                               "source": "unlabelled:fixture", "origin_id": [None]})
    transfer = pd.concat([train.assign(origin_id=train["id"]), augmented, unlabelled], ignore_index=True)
    frames = {"transfer": transfer, "validation": validation, "test": test}
    report = train_fold_teachers(pretrained, root / "teacher_set.parquet", root / "validation.parquet",
                                 root / "folds", root / "folds.json", root / "runs", teacher_settings(), LABELS, FOLDS)
    soft = generate_soft_labels(pretrained, root / "folds", None, frames, train, root / "soft", SETTINGS, LABELS)
    return {"root": root, "teacher": pretrained, "teacher_set": teacher_set, "frames": frames, "train": train,
            "report": report, "soft": soft}


def logits_alone(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Each text through the model on its own, without padding: the reference for the stage's batched scores."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return np.stack([model(**tokenizer(text, truncation=True, max_length=SETTINGS.max_length,
                                           return_tensors="pt")).logits[0].numpy() for text in texts])


def stored_transformer_logits(workspace: dict, soft_dir: Path, fold_teachers: Path | None) -> np.ndarray:
    expected = teacher_fingerprint(workspace["teacher"], LABELS, SETTINGS.max_length, None, fold_teachers)
    return load_soft_labels(soft_dir, "transfer", workspace["frames"]["transfer"], expected, "transformer_logits")


def test_twin_k_is_fine_tuned_on_the_teacher_set_outside_fold_k(workspace: dict) -> None:
    teacher_set = workspace["teacher_set"]
    folds = teacher_set["id"].map(lambda row_id: fold_of(row_id, FOLDS))
    twins = workspace["report"]["twins"]
    assert [twin["train_rows"] for twin in twins] == [int((folds != fold).sum()) for fold in range(FOLDS)]
    assert all(0 < twin["train_rows"] < len(teacher_set) for twin in twins)
    manifest = json.loads((workspace["root"] / "folds" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["folds"] == FOLDS and manifest["seen_ids"] == sorted(teacher_set["id"].unique())


def test_rows_the_teacher_saw_are_scored_by_the_twin_that_did_not(workspace: dict) -> None:
    root, transfer = workspace["root"], workspace["frames"]["transfer"]
    seen = set(workspace["teacher_set"]["id"])
    stored = stored_transformer_logits(workspace, root / "soft", root / "folds")
    expected_scorer = [root / "folds" / f"fold-{fold_of(origin, FOLDS)}" if origin in seen else workspace["teacher"]
                       for origin in transfer["origin_id"]]
    for scorer in set(expected_scorer):
        chosen = np.array([item == scorer for item in expected_scorer])
        np.testing.assert_allclose(stored[chosen], logits_alone(scorer, transfer["text"][chosen].tolist()), atol=1e-4)
    twin_scored = sum(item != workspace["teacher"] for item in expected_scorer)
    assert twin_scored == 41  # train rows 0-39 and the augmented copy of train-3; not train-45's copy, not unlabelled
    assert workspace["soft"]["scored_by_fold_teachers"] == {"en": twin_scored}
    loaded = FoldTeachers.load(root / "folds")
    assert loaded.twin_for("train-45") is None and loaded.twin_for(None) is None


def test_a_row_s_soft_label_does_not_change_when_its_own_label_flips(workspace: dict, tmp_path: Path) -> None:
    root, flipped_id = workspace["root"], "train-7"
    teacher_set = workspace["teacher_set"].copy()
    own = teacher_set["id"] == flipped_id
    teacher_set.loc[own, "label"] = [LABELS[1 - LABELS.index(label)] for label in teacher_set.loc[own, "label"]]
    teacher_set.to_parquet(tmp_path / "teacher_set.parquet")
    train_fold_teachers(workspace["teacher"], tmp_path / "teacher_set.parquet", root / "validation.parquet",
                        tmp_path / "folds", tmp_path / "folds.json", tmp_path / "runs", teacher_settings(), LABELS,
                        FOLDS)  # a fresh work root: trained again, not resumed from the first fixture's runs
    soft = generate_soft_labels(workspace["teacher"], tmp_path / "folds", None, workspace["frames"],
                                workspace["train"], tmp_path / "soft", SETTINGS, LABELS)
    assert soft["scored_by_fold_teachers"] == workspace["soft"]["scored_by_fold_teachers"]
    before = stored_transformer_logits(workspace, root / "soft", root / "folds")
    after = stored_transformer_logits(workspace, tmp_path / "soft", tmp_path / "folds")
    row = workspace["frames"]["transfer"].index[workspace["frames"]["transfer"]["id"] == flipped_id][0]
    np.testing.assert_array_equal(after[row], before[row])
    own_fold = fold_of(flipped_id, FOLDS)
    other = f"fold-{1 - own_fold}/model.safetensors"
    assert sha256_of(root / "folds" / other) != sha256_of(tmp_path / "folds" / other)  # the flip reached the other twin
    assert not np.array_equal(after, before)


def test_changed_twins_are_refused(workspace: dict, tmp_path: Path) -> None:
    changed = tmp_path / "folds"
    shutil.copytree(workspace["root"] / "folds", changed)
    shutil.copy(changed / "fold-0/model.safetensors", changed / "fold-1/model.safetensors")
    with pytest.raises(SoftLabelMismatch, match="fold_teachers_sha256"):
        stored_transformer_logits(workspace, workspace["root"] / "soft", changed)
    with pytest.raises(SoftLabelMismatch, match="fold_teachers_sha256"):  # soft labels made without twins
        stored_transformer_logits(workspace, workspace["root"] / "soft", None)


def test_no_folds_leaves_every_row_to_the_teacher_and_one_fold_is_refused(workspace: dict, tmp_path: Path) -> None:
    root = workspace["root"]
    report = train_fold_teachers(workspace["teacher"], root / "teacher_set.parquet", root / "validation.parquet",
                                 tmp_path / "folds", tmp_path / "folds.json", tmp_path / "runs", teacher_settings(),
                                 LABELS, 0)
    assert report["twins"] == [] and [path.name for path in (tmp_path / "folds").iterdir()] == [MANIFEST]
    soft = generate_soft_labels(workspace["teacher"], tmp_path / "folds", None, workspace["frames"],
                                workspace["train"], tmp_path / "soft", SETTINGS, LABELS)
    assert soft["scored_by_fold_teachers"] == {}
    transfer = workspace["frames"]["transfer"]
    np.testing.assert_allclose(stored_transformer_logits(workspace, tmp_path / "soft", tmp_path / "folds"),
                               logits_alone(workspace["teacher"], transfer["text"].tolist()), atol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        train_fold_teachers(workspace["teacher"], root / "teacher_set.parquet", root / "validation.parquet",
                            tmp_path / "one", tmp_path / "one.json", tmp_path / "runs", teacher_settings(), LABELS, 1)
