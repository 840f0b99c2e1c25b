"""Distil one student per language, and train the same student with plain cross-entropy as the KD baseline.

shared mode: the student learns from the multilingual teacher's stored soft labels.
independent mode: the multilingual teacher is first fine-tuned further on the language alone, its own soft labels
are generated, and the student learns from those.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from polydistill.data.balance import class_row_weights
from polydistill.data.word_frequencies import read_word_frequencies
from polydistill.model.losses import (
    IGNORE_LABEL,
    HiddenProjector,
    attention_map_loss,
    distillation_loss,
    hidden_state_loss,
    kept_attention_map,
    kept_layer_map,
)
from polydistill.model.narrow import NarrowSettings, build_narrow_student
from polydistill.model.soft_labels import SoftLabelSettings, generate_soft_labels, load_soft_labels, teacher_fingerprint
from polydistill.model.student import (
    TEACHER_TOKEN_IDS_FILE,
    StudentInfo,
    VocabularySettings,
    build_scratch_student,
    build_student_from_teacher,
    student_segmentation,
)
from polydistill.model.teacher import TEACHER_CODE, encode_frame, fine_tune
from polydistill.model.training import (
    Batch,
    EncodedSet,
    RunInput,
    TrainSettings,
    export_best,
    run_key,
    train_classifier,
)

VARIANTS = ("kd", "ce")
# what the CE-only student does not read
KD_ONLY_SETTINGS = ("alpha", "temperature", "hidden_loss_weight", "attention_loss_weight")
PER_LANGUAGE_SETTINGS = ("alpha", "temperature")  # what distill.per_language may set for one language
MODES = ("shared", "independent")
STUDENT_KINDS = ("from_teacher", "narrow", "scratch")
STUDENT_CODE = tuple(Path(__file__).with_name(f"{module}.py")  # the source a student run key covers
                     for module in ("distill", "distributed", "losses", "narrow", "student", "teacher",
                                    "training"))


@dataclass(frozen=True)
class ScratchSettings:
    """distill.student.scratch: the shape of a randomly initialised student."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class StudentSettings:
    """distill.student: how the initial student is built (the narrow shape takes the students' max_length)."""

    kind: str
    layers: tuple[int, ...]
    narrow: NarrowSettings
    vocabulary: VocabularySettings
    scratch: ScratchSettings

    def __post_init__(self) -> None:
        if self.kind not in STUDENT_KINDS:
            raise ValueError(f"unknown distill.student.kind '{self.kind}': use {', '.join(STUDENT_KINDS)}")

    @classmethod
    def from_params(cls, section: dict[str, Any], max_length: int) -> StudentSettings:
        return cls(kind=section["kind"], layers=tuple(section["layers"]),
                   narrow=NarrowSettings(**section["narrow"], max_length=max_length),
                   vocabulary=VocabularySettings(**section["vocabulary"]),
                   scratch=ScratchSettings(**section["scratch"]))


@dataclass(frozen=True)
class DistillSettings:
    """params.yaml's distill section: the KD loss, the students' shape and training, independent mode's teacher."""

    mode: str
    alpha: float
    temperature: float
    class_weights: str | dict[str, float]
    class_weight_beta: float
    hidden_loss_weight: float
    attention_loss_weight: float
    threads: int
    student: StudentSettings
    train: TrainSettings
    independent_teacher: TrainSettings
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)  # {lang: {alpha: …, temperature: …}}

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown distill.mode '{self.mode}': use shared or independent")
        for lang, overrides in self.per_language.items():
            unknown = sorted(set(overrides) - set(PER_LANGUAGE_SETTINGS))
            if unknown:
                raise ValueError(f"distill.per_language.{lang} sets {unknown}; only {list(PER_LANGUAGE_SETTINGS)} "
                                 "vary per language")

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> DistillSettings:
        """The section as params.yaml holds it; the students' TrainSettings run with distill.threads."""
        train = TrainSettings.from_params({**section["train"], "threads": section["threads"]})
        nested = ("student", "train", "independent_teacher", "per_language")
        scalars = {item.name: section[item.name] for item in fields(cls) if item.name not in nested}
        return cls(**scalars, student=StudentSettings.from_params(section["student"], train.max_length), train=train,
                   independent_teacher=TrainSettings.from_params(section["independent_teacher"]),
                   per_language=section.get("per_language") or {})

    def for_language(self, lang: str) -> DistillSettings:
        """The settings one language trains with: its `per_language` alpha / temperature over the shared ones.

        `per_language` itself is dropped, so a language's run key changes only when its own values change.
        """
        return replace(self, per_language={}, **self.per_language.get(lang, {}))


def build_student(teacher_dir: Path, texts: list[str], output_dir: Path, student: StudentSettings,
                  seed: int, words: Sequence[tuple[str, float]] = ()) -> StudentInfo:
    """The initial student for one language, as params.yaml's distill.student describes; its vocabulary from
    texts and the language's word frequency list."""
    if student.kind == "from_teacher":
        return build_student_from_teacher(teacher_dir, texts, list(student.layers), output_dir, student.vocabulary,
                                          words)
    if student.kind == "narrow":
        return build_narrow_student(teacher_dir, texts, list(student.layers), student.narrow, output_dir,
                                    student.vocabulary, words)
    scratch = student.scratch
    return build_scratch_student(teacher_dir, texts, scratch.hidden_size, scratch.num_layers, scratch.num_heads,
                                 scratch.intermediate_size, output_dir, seed, student.vocabulary, words)


class KnowledgeDistillationLoss:
    """alpha·T²·KL + (1 − alpha)·CE on the stored teacher logits, plus optional hidden-state and attention-map terms.

    Those terms run the teacher on the same tokens (student ids mapped back to teacher ids); the attention-map term
    needs both models in eager attention (see needs_attentions).
    """

    def __init__(self, alpha: float, temperature: float, hidden_weight: float = 0.0,
                 teacher: torch.nn.Module | None = None, teacher_ids: list[int] | None = None,
                 layers: list[int] | None = None, student_width: int = 0, attention_weight: float = 0.0) -> None:
        self.alpha, self.temperature = alpha, temperature
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.teacher = teacher
        if self.runs_teacher:
            self.teacher_ids = torch.tensor(teacher_ids, dtype=torch.long)
        if hidden_weight > 0:
            self.layer_map = kept_layer_map(layers)
            teacher_width = teacher.config.hidden_size
            self.projector = (HiddenProjector(len(self.layer_map), student_width, teacher_width)
                              if student_width != teacher_width else None)
        if attention_weight > 0:
            self.attention_map = kept_attention_map(layers)

    @property
    def runs_teacher(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def needs_attentions(self) -> bool:
        """Whether the student must run in eager attention (SDPA returns no attention probabilities)."""
        return self.attention_weight > 0

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer must train besides the student's (the projections)."""
        return list(self.projector.parameters()) if self.hidden_weight > 0 and self.projector else []

    def __call__(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        wanted = {"output_hidden_states": self.hidden_weight > 0, "output_attentions": self.attention_weight > 0}
        outputs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **wanted)
        parts = distillation_loss(outputs.logits, batch.teacher_logits, batch.labels, self.alpha, self.temperature,
                                  batch.weights)
        losses = {"total": parts.total, "distillation": parts.distillation, "cross_entropy": parts.cross_entropy}
        if not self.runs_teacher:
            return losses
        with torch.inference_mode():
            taught = self.teacher(input_ids=self.teacher_ids[batch.input_ids], attention_mask=batch.attention_mask,
                                  **wanted)
        if self.hidden_weight > 0:
            losses["hidden"] = hidden_state_loss(outputs.hidden_states, [state.clone() for state in
                                                                         taught.hidden_states],
                                                 self.layer_map, self.projector, batch.attention_mask)
            losses["total"] = losses["total"] + self.hidden_weight * losses["hidden"]
        if self.attention_weight > 0:
            losses["attention"] = attention_map_loss(outputs.attentions, [probabilities.clone() for probabilities in
                                                                          taught.attentions],
                                                     self.attention_map, batch.attention_mask)
            losses["total"] = losses["total"] + self.attention_weight * losses["attention"]
        return losses


def train_student(initial_dir: Path, train: pd.DataFrame, teacher_logits: np.ndarray | None,
                  validation: pd.DataFrame, output_dir: Path, work_dir: Path, train_settings: TrainSettings,
                  labels: list[str], loss: KnowledgeDistillationLoss | None, task: str) -> dict[str, Any]:
    """Train a copy of the initial student (KD when loss is given, else CE) and keep its best checkpoint."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(initial_dir)
    model = AutoModelForSequenceClassification.from_pretrained(initial_dir)
    if loss is not None and loss.extra_parameters():
        model.add_module("hidden_projector", loss.projector)
    if loss is not None and loss.needs_attentions:
        model.set_attn_implementation("eager")
    train_set = encode_transfer(tokenizer, train, labels, train_settings.max_length)
    train_set.teacher_logits = teacher_logits
    validation_set = encode_frame(tokenizer, validation, labels, train_settings.max_length)

    def save_best(path: Path) -> None:
        state = {name: tensor for name, tensor in model.state_dict().items()
                 if not name.startswith("hidden_projector.")}
        model.save_pretrained(path, state_dict=state)
        tokenizer.save_pretrained(path)
        shutil.copy2(initial_dir / TEACHER_TOKEN_IDS_FILE, path / TEACHER_TOKEN_IDS_FILE)

    kwargs = {"loss_function": loss} if loss is not None else {}
    state = train_classifier(model, train_set, validation_set, train_settings, work_dir, tokenizer.pad_token_id,
                             save_best=save_best, task=task, **kwargs)
    export_best(work_dir, output_dir)
    best = state.best_evaluation()
    return {"run": work_dir.name, "best_step": state.best_step, "steps": state.step,
            "selected_by": train_settings.select_by,
            "best_validation_macro_f1": best["validation_macro_f1_mean"],
            "best_validation_log_loss": best["validation_log_loss_mean"], "train_rows": len(train_set),
            "history": state.history}


def encode_transfer(tokenizer: Any, frame: pd.DataFrame, labels: list[str], max_length: int) -> EncodedSet:
    """encode_frame for transfer rows, some without a gold label: those get IGNORE_LABEL."""
    encoded = encode_frame(tokenizer, frame, labels, max_length)
    encoded.labels = np.nan_to_num(encoded.labels.astype(float), nan=IGNORE_LABEL).astype(np.int64)
    return encoded


def language_teacher(lang: str, teacher_dir: Path, tfidf_dir: Path | None, frames: dict[str, pd.DataFrame],
                     teacher_set: pd.DataFrame, output_dir: Path, work_root: Path, teacher_settings: TrainSettings,
                     soft_label_settings: SoftLabelSettings, labels: list[str]) -> tuple[Path, Path, dict]:
    """independent mode: fine-tune the teacher on one language, then generate its own soft labels (it has no fold
    twins: it scores the transfer rows it was fine-tuned on)."""
    lang_teacher_dir = output_dir / "teacher"
    rows = teacher_set[teacher_set["lang"] == lang]
    key = run_key({**asdict(teacher_settings), "labels": labels}, [teacher_dir / "model.safetensors", rows,
                                                           frames["validation"]], TEACHER_CODE)
    metrics = fine_tune(teacher_dir, rows, frames["validation"], lang_teacher_dir,
                        work_root / f"teacher-{lang}-{key}", teacher_settings, labels, task=f"{lang} teacher")
    soft_dir = output_dir / "soft_labels"
    soft_frames = {name: frames[name] for name in ("transfer", "validation", "test")}
    generate_soft_labels(lang_teacher_dir, None, tfidf_dir, soft_frames, frames["train"], soft_dir,
                         soft_label_settings, labels)
    return lang_teacher_dir, soft_dir, metrics


def distill_language(lang: str, paths: dict[str, Path], settings: DistillSettings,
                     soft_label_settings: SoftLabelSettings, labels: list[str]) -> dict[str, Any]:
    """Build, distil and CE-train the students of one language; write them and their metrics.

    The KD student learns from the transfer set (labelled, unlabelled and augmented rows with the teacher's soft
    labels), the CE-only student from the labelled rows alone (the balanced labelled set), so the KD gain measures
    what the teacher adds. Both start from the same initial student, whose vocabulary covers all of the language's
    text except validation and test, ranked with the language's word frequency list where paths has one. paths:
    teacher, fold_teachers, tfidf, soft_labels, transfer, pool, labelled_transfer, teacher_set, train, validation,
    test, output, metrics, work, and optionally word_frequencies (a word_frequencies stage output).
    """
    settings = settings.for_language(lang)
    torch.set_num_threads(settings.threads)
    names = ("transfer", "labelled_transfer", "pool", "train", "validation", "test")
    read = {name: pd.read_parquet(paths[name]) for name in names}
    frames = {name: frame[frame["lang"] == lang].reset_index(drop=True) for name, frame in read.items()}
    output = paths["output"]
    output.mkdir(parents=True, exist_ok=True)
    teacher_dir, soft_dir = paths["teacher"], paths["soft_labels"]
    report: dict[str, Any] = {"mode": settings.mode, "kd_settings": {name: getattr(settings, name)
                                                                     for name in PER_LANGUAGE_SETTINGS}}
    if settings.mode == "independent":
        teacher_dir, soft_dir, report["language_teacher"] = language_teacher(
            lang, paths["teacher"], paths["tfidf"], frames, pd.read_parquet(paths["teacher_set"]), output,
            paths["work"], settings.independent_teacher, soft_label_settings, labels)
        expected = teacher_fingerprint(teacher_dir, labels, soft_label_settings.max_length, paths["tfidf"], None)
        transfer_logits = load_soft_labels(soft_dir, "transfer", frames["transfer"], expected)
    else:
        expected = teacher_fingerprint(teacher_dir, labels, soft_label_settings.max_length, paths["tfidf"],
                                       paths["fold_teachers"])
        all_logits = load_soft_labels(soft_dir, "transfer", read["transfer"], expected)
        transfer_logits = all_logits[(read["transfer"]["lang"] == lang).to_numpy()]

    vocabulary_texts = pd.concat([frames["train"]["text"], frames["pool"]["text"], frames["transfer"]["text"]])
    words = read_word_frequencies(paths["word_frequencies"], lang) if paths.get("word_frequencies") else []
    info = build_student(teacher_dir, vocabulary_texts.drop_duplicates().tolist(), output / "initial",
                         settings.student, settings.train.seed, words)
    report["student"] = {"kind": settings.student.kind, "vocab_size": info.vocab_size,
                         "word_list_words": len(words),
                         "total_params": info.total_params, "non_embedding_params": info.non_embedding_params,
                         "layers": list(info.layers), "hidden_size": info.hidden_size}
    report["segmentation"] = {split: student_segmentation(teacher_dir, output / "initial",
                                                           frames[split]["text"].tolist())
                              for split in ("validation", "test")}
    report["transfer_rows"] = frames["transfer"]["source"].str.split(":").str[0].value_counts().to_dict()
    for variant in VARIANTS:
        loss = distillation_loss_for(variant, settings, teacher_dir, output / "initial", info)
        train_frame, logits = ((frames["transfer"], transfer_logits) if variant == "kd"
                               else (frames["labelled_transfer"], None))
        train_frame = with_class_weights(train_frame, frames["train"], settings)
        key = _student_run_key(variant, lang, settings, output / "initial",
                               [train_frame, frames["validation"]] + ([logits, soft_dir / "fingerprint.json"]
                                                                      if variant == "kd" else []))
        report[variant] = train_student(output / "initial", train_frame, logits, frames["validation"],
                                        output / variant, paths["work"] / f"student-{lang}-{variant}-{key}",
                                        settings.train, labels, loss, task=f"{lang} {variant} student")
    shutil.rmtree(output / "initial")
    paths["metrics"].parent.mkdir(parents=True, exist_ok=True)
    paths["metrics"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def with_class_weights(frame: pd.DataFrame, train: pd.DataFrame, settings: DistillSettings) -> pd.DataFrame:
    """The frame with a `weight` column of per-class loss weights (distill.class_weights, from the language's
    train split), or unchanged when there are none."""
    if settings.class_weights == "none":
        return frame
    weights = class_row_weights(frame["label"], train["label"], settings.class_weights, settings.class_weight_beta)
    return frame.assign(weight=weights)


def _student_run_key(variant: str, lang: str, settings: DistillSettings, initial_dir: Path,
                     inputs: list[RunInput]) -> str:
    """The checkpoint key of one student run: its code, its rows and logits, and the settings it reads.

    The CE-only student ignores the soft labels and the KD settings, so changing the temperature, alpha or the
    hidden-state weight finds its finished run and does not train it again. The narrow student's settings count
    only for a narrow student (the initial weights' hash covers the architecture anyway).
    """
    read = asdict(settings)
    if settings.student.kind != "narrow":
        read["student"].pop("narrow")
    if variant == "ce":
        read = {name: value for name, value in read.items() if name not in KD_ONLY_SETTINGS}
    return run_key({**read, "variant": variant, "lang": lang}, [initial_dir / "model.safetensors", *inputs],
                   STUDENT_CODE)


def distillation_loss_for(variant: str, settings: DistillSettings, teacher_dir: Path, initial_dir: Path,
                          info: StudentInfo) -> KnowledgeDistillationLoss | None:
    if variant == "ce":
        return None
    hidden_weight, attention_weight = settings.hidden_loss_weight, settings.attention_loss_weight
    if hidden_weight <= 0 and attention_weight <= 0:
        return KnowledgeDistillationLoss(settings.alpha, settings.temperature)
    if not info.layers:
        raise ValueError("the hidden-state and attention-map terms need a student built from teacher layers "
                         "(from_teacher or narrow)")
    from transformers import AutoModelForSequenceClassification

    attention = {"attn_implementation": "eager"} if attention_weight > 0 else {}
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, **attention).eval()
    teacher_ids = json.loads((initial_dir / TEACHER_TOKEN_IDS_FILE).read_text(encoding="utf-8"))
    return KnowledgeDistillationLoss(settings.alpha, settings.temperature, hidden_weight, teacher,
                                     teacher_ids, list(info.layers), info.hidden_size, attention_weight)
