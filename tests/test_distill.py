"""distill_language on a tiny teacher: shared mode with the hidden-state term, and independent mode."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT, fixture_texts
from tiny_models import TINY_POSITIONS, TINY_TFIDF_SETTINGS, tiny_pretrained_encoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from polydistill.data.text_key import comparison_key
from polydistill.data.transfer import TransferSettings, compose_transfer
from polydistill.model.distill import (
    DistillSettings,
    distill_language,
    distillation_loss_for,
    encode_frame,
    with_class_weights,
)
from polydistill.model.soft_labels import SoftLabelSettings, generate_soft_labels
from polydistill.model.student import build_student_from_teacher
from polydistill.model.tfidf import fit_baselines
from polydistill.model.training import collate

LABELS = ["negative", "positive"]
SOFT = SoftLabelSettings(ensemble=True, weight_grid=(0.0, 0.5, 1.0), cross_fit_folds=3, max_length=32, batch_size=16,
                         threads=1, runtime="torch_fp32")
QUICK = {"max_length": TINY_POSITIONS, "eval_every": 4, "checkpoint_every": 4, "batch_size": 8, "epochs": 1,
         "eval_rows_per_language": 0}


def split(texts: list[str], langs: list[str], prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{prefix}-{i}" for i in range(len(texts))], "text": texts,
                         "label": [LABELS[i % 2] for i in range(len(texts))], "lang": langs, "source": "fixture"})


def disguised(text: str) -> str:
    """The text as another source might hold it: upper case, with punctuation (equal after normalisation)."""
    return f"¡{text.upper()}!!"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    texts = fixture_texts()
    langs = ["zh" if any("\u4e00" <= char <= "\u9fff" for char in text) else "en" for text in texts]
    frames = {"train": split(texts[:180], langs[:180], "train"),
              "validation": split(texts[180:240], langs[180:240], "val"),
              "test": split(texts[240:], langs[240:], "test")}
    unlabelled = pd.DataFrame({"text": [f"{text} {text[::-1]}" for text in texts[:40]] + [disguised(texts[0])],
                               "lang": langs[:40] + [langs[0]], "source": "fixture-unlabelled", "in_domain": False})
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))["transfer"]
    settings = TransferSettings.from_params({**params, "size": 240})
    held_out = pd.concat([frames["validation"], frames["test"]])
    frames["transfer"], frames["pool"], _ = compose_transfer(frames["train"], held_out, unlabelled, settings)
    frames["labelled_transfer"], _, _ = compose_transfer(frames["train"], held_out, unlabelled,
                                                         TransferSettings.from_params({**params, "size": 240,
                                                                                       "sources": []}))
    paths = {name: root / f"{name}.parquet" for name in frames}
    for name, frame in frames.items():
        frame.to_parquet(paths[name])
    paths["teacher_set"] = paths["train"]
    paths["teacher"] = tiny_pretrained_encoder(root / "teacher", texts, LABELS)
    fit_baselines(paths["train"], paths["validation"], root / "tfidf", root / "tfidf.json", LABELS,
                  TINY_TFIDF_SETTINGS)
    paths["tfidf"] = root / "tfidf"
    soft_frames = {name: frames[name] for name in ("transfer", "validation", "test")}
    generate_soft_labels(paths["teacher"], None, paths["tfidf"], soft_frames, frames["train"], root / "soft", SOFT,
                         LABELS)
    paths["fold_teachers"] = None  # the fold twins have their own tests (test_fold_teachers.py)
    paths["soft_labels"] = root / "soft"
    return paths


def distill_settings(**overrides) -> DistillSettings:
    settings = copy.deepcopy(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))["distill"])
    settings.update(threads=1, **{"per_language": {}, **overrides})  # committed per-language choices hide changes
    settings["student"]["layers"] = [0, 3]
    settings["student"]["narrow"].update(hidden_size=16, num_heads=2, intermediate_size=32, sample_texts=64)
    settings["train"].update(QUICK)
    settings["independent_teacher"].update(QUICK, threads=1)
    return DistillSettings.from_params(settings)


def run(workspace: dict[str, Path], tmp_path: Path, lang: str, settings: DistillSettings) -> dict:
    paths = {**workspace, "output": tmp_path / "students" / lang, "metrics": tmp_path / f"{lang}.json",
             "work": tmp_path / "runs"}
    report = distill_language(lang, paths, settings, SOFT, LABELS)
    assert json.loads(paths["metrics"].read_text(encoding="utf-8")) == report
    return report


def test_shared_mode_with_hidden_state_matching(workspace: dict[str, Path], tmp_path: Path) -> None:
    report = run(workspace, tmp_path, "zh", distill_settings(mode="shared", hidden_loss_weight=0.5))
    assert report["student"]["layers"] == [0, 3]
    assert all(entry["train_hidden"] >= 0 for entry in report["kd"]["history"])
    assert "train_hidden" not in report["ce"]["history"][0]
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "students/zh/kd")
    assert student.config.num_hidden_layers == 2
    assert not any(name.startswith("hidden_projector") for name in student.state_dict())
    assert not (tmp_path / "students/zh/initial").exists()
    assert set(report["transfer_rows"]) == {"labelled", "unlabelled", "augmented"}
    assert report["kd"]["train_rows"] > report["transfer_rows"]["labelled"]
    assert report["ce"]["train_rows"] == report["kd"]["train_rows"]  # same size, labelled rows only
    assert 0 < report["segmentation"]["test"]["identical_share"] <= 1


def test_class_weights_reach_both_students_and_leave_unlabelled_rows_at_one(workspace: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    transfer = pd.read_parquet(workspace["transfer"])
    transfer = transfer[transfer["lang"] == "zh"].reset_index(drop=True)
    train = pd.read_parquet(workspace["train"])
    train = train[train["lang"] == "zh"]
    explicit = {"negative": 3.0, "positive": 1.0}
    weighted = with_class_weights(transfer, train, distill_settings(class_weights=explicit))
    labelled = weighted["label"].notna()
    assert (weighted.loc[~labelled, "weight"] == 1.0).all() and weighted.loc[labelled, "weight"].mean() == \
        pytest.approx(1.0)
    assert "weight" not in with_class_weights(transfer, train, distill_settings())
    plain = run(workspace, tmp_path / "plain", "zh", distill_settings())
    reweighted = run(workspace, tmp_path / "weighted", "zh", distill_settings(class_weights=explicit))
    for variant in ("kd", "ce"):
        assert reweighted[variant]["history"][0]["train_total"] != plain[variant]["history"][0]["train_total"]


def test_a_student_with_every_teacher_layer_starts_at_zero_hidden_and_attention_loss(workspace: dict[str, Path],
                                                                                     tmp_path: Path) -> None:
    """Copied layers and a token map back to teacher ids: the student's hidden states and attention maps are the
    teacher's, so both terms are 0 before any step (and would not be with a wrong token map or layer pairing)."""
    train = pd.read_parquet(workspace["train"])
    texts = train.loc[train["lang"] == "zh", "text"].tolist()
    teacher = AutoModelForSequenceClassification.from_pretrained(workspace["teacher"])
    every_layer = list(range(teacher.config.num_hidden_layers))
    info = build_student_from_teacher(workspace["teacher"], texts, every_layer, tmp_path / "student")
    settings = distill_settings(alpha=0.5, temperature=2.0, hidden_loss_weight=1.0, attention_loss_weight=1.0)
    loss = distillation_loss_for("kd", settings, workspace["teacher"], tmp_path / "student", info)
    assert loss.needs_attentions
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student",
                                                                 attn_implementation="eager").eval()
    encoded = encode_frame(AutoTokenizer.from_pretrained(tmp_path / "student"), train[train["lang"] == "zh"][:8],
                           LABELS, 32)
    encoded.teacher_logits = np.zeros((len(encoded), len(LABELS)), dtype=np.float32)
    batch = collate(encoded, np.arange(len(encoded)), student.config.pad_token_id)
    assert batch.attention_mask.min() == 0, "the batch must hold padding for the masks to matter"
    parts = loss(student, batch)
    assert loss.projector is None
    assert float(parts["hidden"]) == pytest.approx(0.0, abs=1e-10)
    matched_attention = float(parts["attention"])
    assert matched_attention == pytest.approx(0.0, abs=1e-8)
    loss.teacher_ids = loss.teacher_ids.roll(1)  # a wrong token map: both terms must see it
    parts = loss(student, batch)
    # the tiny teacher's attention is near uniform, so a wrong map moves it little, but far beyond rounding
    assert float(parts["hidden"]) > 1e-4 and float(parts["attention"]) > 1000 * max(matched_attention, 1e-12)


def test_a_run_with_the_attention_term_logs_it_for_the_kd_student_only(workspace: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """The narrow test student (half the teacher's layers, fewer heads) distils with the attention-map term; the
    saved student does not keep the eager attention it trained in."""
    report = run(workspace, tmp_path, "zh", distill_settings(mode="shared", attention_loss_weight=1.0))
    assert all(entry["train_attention"] > 0 for entry in report["kd"]["history"])
    assert "train_attention" not in report["ce"]["history"][0]
    saved = json.loads((tmp_path / "students/zh/kd/config.json").read_text(encoding="utf-8"))
    assert "eager" not in json.dumps(saved)


def test_the_ce_student_never_sees_unlabelled_rows(workspace: dict[str, Path]) -> None:
    labelled = pd.read_parquet(workspace["labelled_transfer"])
    train = pd.read_parquet(workspace["train"])
    assert set(labelled["id"]) <= set(train["id"]) and labelled["label"].notna().all()
    transfer = pd.read_parquet(workspace["transfer"])
    extra_keys = set(transfer.loc[transfer["source"] != "labelled", "text"].map(comparison_key))
    assert extra_keys, "the fixture's KD transfer set holds unlabelled and augmented rows"
    assert not labelled["text"].map(comparison_key).isin(extra_keys).any()
    # an unlabelled text equal to a train text after normalisation (another id) is dropped from the pool
    assert disguised(train["text"].iloc[0]) not in set(pd.read_parquet(workspace["pool"])["text"])


def test_independent_mode_fine_tunes_a_language_teacher_first(workspace: dict[str, Path], tmp_path: Path) -> None:
    report = run(workspace, tmp_path, "en", distill_settings(mode="independent"))
    language_teacher = tmp_path / "students/en/teacher"
    assert (language_teacher / "model.safetensors").exists()
    assert set(report["language_teacher"]["validation_macro_f1"]) == {"en", "mean"}
    fingerprint = json.loads((tmp_path / "students/en/soft_labels/fingerprint.json").read_text(encoding="utf-8"))
    assert fingerprint["rows"]["transfer"]["rows"] == report["kd"]["train_rows"]
    assert set(fingerprint["ensemble"]["weights"]) == {"en"}


def test_a_new_temperature_retrains_only_the_kd_student(workspace: dict[str, Path], tmp_path: Path) -> None:
    first = run(workspace, tmp_path, "zh", distill_settings(mode="shared", temperature=2.0))
    second = run(workspace, tmp_path, "zh", distill_settings(mode="shared", temperature=4.0))
    runs = tmp_path / "runs"
    assert len(list(runs.glob("student-zh-kd-*"))) == 2
    assert len(list(runs.glob("student-zh-ce-*"))) == 1
    assert second["ce"] == first["ce"]  # the finished CE run was found, history and timings included
    assert (tmp_path / "students/zh/ce/model.safetensors").exists()


def test_a_per_language_temperature_is_the_run_of_that_temperature_set_for_all(workspace: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    """distill.per_language.zh.temperature = 4 trains zh's KD student as a global temperature of 4 would (same run
    key), leaves the CE-only student alone, and is reported; a key other than alpha or temperature is refused."""
    run(workspace, tmp_path, "zh", distill_settings(mode="shared", temperature=2.0))
    adapted = run(workspace, tmp_path, "zh", distill_settings(mode="shared", temperature=2.0,
                                                              per_language={"zh": {"temperature": 4.0}}))
    assert adapted["kd_settings"] == {"alpha": 0.7, "temperature": 4.0}
    runs = tmp_path / "runs"
    assert len(list(runs.glob("student-zh-kd-*"))) == 2 and len(list(runs.glob("student-zh-ce-*"))) == 1
    globally = run(workspace, tmp_path, "zh", distill_settings(mode="shared", temperature=4.0))
    assert len(list(runs.glob("student-zh-kd-*"))) == 2 and globally["kd"] == adapted["kd"]
    assert distill_settings(per_language={"zh": {"alpha": 0.2}}).for_language("en").alpha == 0.7
    with pytest.raises(ValueError, match="only"):
        distill_settings(per_language={"zh": {"epochs": 2}})
