"""Benchmark 1: distillation-loop throughput, polydistill's loop vs the naive padded loop vs Hugging Face Trainer.

The same student (built from the real teacher for one language), the same slice of the transfer set with its stored
teacher logits, the same batch size, number of optimizer steps and KD loss; tokenisation happens before timing.
Model FLOPs of a training step (PaLM appendix B convention, forward + backward):
    FLOPs(example of L tokens) = 6 · N · L + 12 · n_layers · d · L²
with N the non-embedding parameters and d the hidden size. Useful FLOPs count real tokens only; the FLOP
utilisation (MFU) is useful FLOPs per second over a measured fp32 matmul peak with the same threads.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.common import (
    REPO_ROOT,
    format_summary,
    interleave,
    load_project_params,
    paired_ratios,
    require,
    summarize,
    target,
)
from polydistill.model.distill import DistillSettings, KnowledgeDistillationLoss, build_student, encode_transfer
from polydistill.model.metrics import model_size
from polydistill.model.soft_labels import load_soft_labels, teacher_fingerprint
from polydistill.model.teacher import encode_frame
from polydistill.model.training import Batch, EncodedSet, TrainSettings, make_optimizer, train_classifier

SIZES = {
    "quick": {"steps": 4, "repeats": 2, "peak_size": 1024, "peak_repeats": 5, "validation_rows": 16},
    "full": {"steps": 24, "repeats": 3, "peak_size": 2048, "peak_repeats": 8, "validation_rows": 32},
}
LANGUAGE = "en"
NAIVE_MAX_LENGTH = 512
TARGETS = {"a/b": 5.0, "a/c": 1.2}


def training_flops(non_embedding_params: int, num_layers: int, hidden_size: int, length: int) -> float:
    """Forward + backward FLOPs of one example of `length` tokens: 6·N·L + 12·n_layers·d·L²."""
    return 6.0 * non_embedding_params * length + 12.0 * num_layers * hidden_size * length**2


def matmul_peak_flops(size: int, repeats: int) -> float:
    """Best fp32 FLOP/s of torch.matmul on two size × size matrices (2·size³ FLOPs per product)."""
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(size, size, generator=generator) for _ in range(2))
    torch.matmul(left, right)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(left, right)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


@dataclass
class CountingLoss:
    """The KD loss, counting real and processed (padded) tokens and the useful FLOPs of each batch."""

    loss: KnowledgeDistillationLoss
    shape: tuple[int, int, int]  # non-embedding params, layers, hidden size
    counts: dict[str, float] = field(default_factory=lambda: {"examples": 0, "real_tokens": 0, "padded_tokens": 0,
                                                               "useful_flops": 0.0, "steps": 0})
    stamps: list[float] = field(default_factory=list)  # perf_counter at each call: steady-state step time

    def __call__(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        self.stamps.append(time.perf_counter())
        lengths = batch.attention_mask.sum(dim=1).tolist()
        self.counts["examples"] += len(lengths)
        self.counts["real_tokens"] += sum(lengths)
        self.counts["padded_tokens"] += batch.input_ids.numel()
        self.counts["useful_flops"] += sum(training_flops(*self.shape, length) for length in lengths)
        self.counts["steps"] += 1
        return self.loss(model, batch)


def load_slice(teacher_dir: Path, student_dir: Path, rows: int,
               params: dict[str, Any]) -> tuple[pd.DataFrame, EncodedSet]:
    """The first `rows` transfer rows of the language, encoded for the student, with their stored teacher logits."""
    from transformers import AutoTokenizer

    labels = params["data"]["labels"]
    transfer = pd.read_parquet(REPO_ROOT / "data/transfer/transfer.parquet")
    tfidf_dir = REPO_ROOT / "models/tfidf" if params["soft_labels"]["ensemble"] else None
    expected = teacher_fingerprint(teacher_dir, labels, params["soft_labels"]["max_length"], tfidf_dir,
                                   REPO_ROOT / "models/fold_teachers")
    logits = load_soft_labels(REPO_ROOT / "data/soft_labels", "transfer", transfer, expected)
    mask = (transfer["lang"] == LANGUAGE).to_numpy()
    frame = transfer[mask].reset_index(drop=True).iloc[:rows]
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    encoded = encode_transfer(tokenizer, frame, labels, params["distill"]["train"]["max_length"])
    encoded.teacher_logits = logits[mask][:rows]
    return frame, encoded


def run_polydistill(student_dir: Path, train: EncodedSet, validation: EncodedSet, settings: TrainSettings,
                    loss: CountingLoss, work_dir: Path) -> float:
    """(a) train_classifier with the KD loss: seconds of the call (its one evaluation and checkpoint included)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    pad_id = AutoTokenizer.from_pretrained(student_dir).pad_token_id
    shutil.rmtree(work_dir, ignore_errors=True)
    started = time.perf_counter()
    train_classifier(model, train, validation, settings, work_dir, pad_id, loss_function=loss)
    return time.perf_counter() - started


def run_naive(student_dir: Path, frame: pd.DataFrame, train: EncodedSet, settings: TrainSettings,
              loss: CountingLoss) -> float:
    """(b) every text padded to 512 tokens, random batches, the same optimizer, schedule, clipping and loss."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    encoded = AutoTokenizer.from_pretrained(student_dir)(frame["text"].tolist(), padding="max_length",
                                                         truncation=True, max_length=NAIVE_MAX_LENGTH,
                                                         return_tensors="pt")
    labels = torch.tensor(train.labels, dtype=torch.long)
    logits = torch.tensor(train.teacher_logits, dtype=torch.float32)
    steps = len(train) // settings.batch_size
    optimizer, scheduler = make_optimizer(model, settings, steps)
    order = torch.from_numpy(np.random.default_rng(settings.seed).permutation(len(train)))
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        rows = order[step * settings.batch_size:(step + 1) * settings.batch_size]
        batch = Batch(encoded["input_ids"][rows], encoded["attention_mask"][rows], labels[rows], logits[rows])
        loss(model, batch)["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def run_trainer(student_dir: Path, train: EncodedSet, settings: TrainSettings, loss: CountingLoss,
                output_dir: Path) -> float:
    """(c) Hugging Face Trainer with its defaults, a KD compute_loss, teacher logits as a dataset column."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            batch = Batch(inputs["input_ids"], inputs["attention_mask"], inputs["labels"], inputs["teacher_logits"])
            return loss(model, batch)["total"]

    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    dataset = Dataset.from_dict({"input_ids": train.input_ids, "labels": train.labels.tolist(),
                                 "teacher_logits": train.teacher_logits.tolist()})
    arguments = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=settings.batch_size,
        max_steps=len(train) // settings.batch_size, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, seed=settings.seed, report_to="none", save_strategy="no",
        remove_unused_columns=False, use_cpu=True, disable_tqdm=True)
    trainer = DistillationTrainer(model=model, args=arguments, train_dataset=dataset,
                                  processing_class=AutoTokenizer.from_pretrained(student_dir))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def trainer_available() -> str | None:
    """None when transformers.Trainer can run here, else why not."""
    try:
        import accelerate  # noqa: F401  (Trainer refuses to start without it)
    except ImportError:
        return "accelerate is not installed (transformers.Trainer needs it): pip install accelerate==1.15.0"
    return None


def contender(run: Any, loss: CountingLoss) -> Any:
    """A zero-argument measurement: seconds, examples, tokens and useful FLOPs of one run."""
    def measure() -> dict[str, float]:
        before = dict(loss.counts)
        loss.stamps.clear()
        seconds = run()
        done = {key: loss.counts[key] - before[key] for key in loss.counts}
        steady = (loss.stamps[-1] - loss.stamps[0]) / (len(loss.stamps) - 1)
        return {"seconds": seconds, **done, "examples_per_s": done["examples"] / seconds,
                "real_tokens_per_s": done["real_tokens"] / seconds,
                "useful_flops_per_s": done["useful_flops"] / seconds,
                "steady_step_seconds": steady, "steady_examples_per_s": done["examples"] / done["steps"] / steady}
    return measure


def run(quick: bool) -> dict[str, Any]:
    """Interleave (a), (b), (c) for a number of repeats; report throughput, ratios and MFU."""
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    teacher_dir = require(REPO_ROOT / "models/teacher", "make run")
    require(REPO_ROOT / "data/soft_labels/transfer.parquet", "make run")
    train_params = params["distill"]["train"]
    steps, batch_size = sizes["steps"], train_params["batch_size"]
    settings = TrainSettings.from_params({**train_params, "epochs": 1, "eval_every": steps, "checkpoint_every": steps,
                                          "eval_rows_per_language": sizes["validation_rows"]})
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as scratch:
        scratch = Path(scratch)
        prepared_train = pd.read_parquet(REPO_ROOT / "data/prepared/train.parquet")
        texts = prepared_train[prepared_train["lang"] == LANGUAGE]["text"].tolist()
        info = build_student(teacher_dir, texts, scratch / "student",
                             DistillSettings.from_params(params["distill"]).student, train_params["seed"])
        size = model_size(info.path)
        shape = (size["non_embedding_params"], size["num_layers"], size["hidden_size"])
        frame, train = load_slice(teacher_dir, info.path, steps * batch_size, params)
        from transformers import AutoTokenizer

        validation_frame = pd.read_parquet(REPO_ROOT / "data/prepared/validation.parquet")
        validation = encode_frame(AutoTokenizer.from_pretrained(info.path),
                                  validation_frame[validation_frame["lang"] == LANGUAGE],
                                  params["data"]["labels"], settings.max_length)
        kd = KnowledgeDistillationLoss(params["distill"]["alpha"], params["distill"]["temperature"])
        losses = {name: CountingLoss(kd, shape) for name in ("a", "b", "c")}
        contenders = {
            "a": contender(lambda: run_polydistill(info.path, train, validation, settings, losses["a"],
                                                   scratch / "work"), losses["a"]),
            "b": contender(lambda: run_naive(info.path, frame, train, settings, losses["b"]), losses["b"]),
        }
        skipped_trainer = trainer_available()
        if skipped_trainer is None:
            contenders["c"] = contender(lambda: run_trainer(info.path, train, settings, losses["c"],
                                                            scratch / "trainer"), losses["c"])
        peaks = [matmul_peak_flops(sizes["peak_size"], sizes["peak_repeats"])]
        runs = interleave(contenders, sizes["repeats"])
        peaks.append(matmul_peak_flops(sizes["peak_size"], sizes["peak_repeats"]))
    return summarise_runs(runs, max(peaks), size, steps, batch_size, skipped_trainer, sizes)


NAMES = {"a": "(a) polydistill train_classifier (length buckets, dynamic padding)",
         "b": "(b) naive: padded to 512, no bucketing",
         "c": "(c) Hugging Face Trainer defaults + KD compute_loss"}


def summarise_runs(runs: dict[str, list[dict]], peak: float, size: dict[str, Any], steps: int, batch_size: int,
                   skipped_trainer: str | None, sizes: dict[str, Any]) -> dict[str, Any]:
    """Tables, ratios and targets from the interleaved runs."""
    rows = []
    for name, measurements in runs.items():
        first = measurements[0]
        examples = summarize([entry["examples_per_s"] for entry in measurements])
        tokens = summarize([entry["real_tokens_per_s"] for entry in measurements])
        mfu = summarize([entry["useful_flops_per_s"] / peak for entry in measurements])
        rows.append([NAMES[name], format_summary(examples, ".1f"), format_summary(tokens, ".0f"),
                     f"{first['padded_tokens'] / first['steps']:.0f}",
                     f"{first['real_tokens'] / first['padded_tokens']:.0%}", format_summary(
                         {key: value * 100 for key, value in mfu.items() if key != "n"} | {"n": mfu["n"]}, ".2f", "%"),
                     format_summary(summarize([entry["seconds"] for entry in measurements]), ".1f"),
                     format_summary(summarize([entry["steady_examples_per_s"] for entry in measurements]), ".1f")])
    throughput = {name: [entry["examples_per_s"] for entry in measurements] for name, measurements in runs.items()}
    steady = {name: [entry["steady_examples_per_s"] for entry in measurements] for name, measurements in runs.items()}
    ratios = {f"a/{other}": paired_ratios(throughput["a"], throughput[other]) for other in ("b", "c") if other in runs}
    steady_ratios = {f"a/{other}": paired_ratios(steady["a"], steady[other]) for other in ("b", "c") if other in runs}
    result = {
        "name": "loop", "title": "1. Distillation loop throughput",
        "config": {**sizes, "language": LANGUAGE, "batch_size": batch_size, "steps": steps,
                   "student_total_params": size["total_params"], "student_non_embedding_params":
                   size["non_embedding_params"], "student_layers": size["num_layers"],
                   "hidden_size": size["hidden_size"], "matmul_peak_gflops": peak / 1e9},
        "runs": runs, "ratios": ratios, "steady_ratios": steady_ratios,
        "tables": [
            {"title": f"Throughput ({steps} optimizer steps × batch {batch_size}, {LANGUAGE} student, "
                      f"{size['num_layers']} layers, {size['non_embedding_params']:,} non-embedding params; "
                      f"median (min–max) of {sizes['repeats']} interleaved repeats)",
             "columns": ["loop", "examples/s", "real tokens/s", "tokens processed/step", "real share", "MFU",
                         "seconds", "steady-state examples/s"],
             "rows": rows},
            {"title": "Ratios of examples/s (per-repeat pairs)",
             "columns": ["ratio", "whole run, median (min–max)", "steady state, median (min–max)", "target"],
             "rows": [[key, format_summary(value, ".2f", "x"), format_summary(steady_ratios[key], ".2f", "x"),
                       f">= {TARGETS[key]}x (whole run)"] for key, value in ratios.items()]},
        ],
        "targets": [target(f"loop {key} examples/s", value["median"], TARGETS[key], unit="x")
                    for key, value in ratios.items()],
        "notes": [
            f"FLOPs per example of L tokens (forward + backward) = 6·N·L + 12·n_layers·d·L², N = non-embedding "
            f"params; MFU = useful FLOPs (real tokens only) per second / fp32 matmul peak "
            f"({peak / 1e9:.1f} GFLOP/s: best torch.matmul of {sizes['peak_size']}² matrices, measured before "
            "and after the runs, same threads).",
            "Whole run = wall time of the call (fixed costs included); steady state = mean time between the loss "
            "calls of consecutive steps (excludes set-up, the last step and end-of-run work). Targets use the "
            "whole run. Tokenisation is done before timing for all three. (a) includes its one end-of-run "
            "validation pass "
            f"({sizes['validation_rows']} rows) and checkpoint write; (c) saves nothing (save_strategy='no').",
            "(c) keeps Trainer's defaults (DataCollatorWithPadding, random sampler, linear decay without warmup) "
            "and only sets batch size, max_steps, learning rate, weight decay, seed, report_to='none', "
            "remove_unused_columns=False (the teacher-logit column) and disable_tqdm.",
        ],
    }
    if skipped_trainer:
        result["notes"].append(f"(c) not run: {skipped_trainer}")
    return result
