"""Benchmark 4: the teacher's imbalance levers side by side: language sampling (alpha) and loss weights, alone and
together. For each condition, a reduced teacher fine-tuning (polydistill.data.balance sample of the real prepared
train split, with the condition's row weights; polydistill.model.teacher.fine_tune from the pretrained encoder, one
epoch, so every condition takes the same number of optimizer steps), then each language's validation and test
macro-F1 with bootstrap intervals. Validation picks; test reports."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import f1_score

from bench.common import REPO_ROOT, load_project_params, require
from bench.seeds import gold_codes
from polydistill.data.balance import LossWeightSettings, row_weights, sample_balanced, share_report
from polydistill.model.metrics import bootstrap_macro_f1, percentile_interval
from polydistill.model.runtime import probabilities_from_model
from polydistill.model.student import build_student_from_teacher
from polydistill.model.teacher import fine_tune
from polydistill.model.training import TrainSettings

CONDITIONS = {  # name: (sampling alpha, language loss weighting)
    "natural": (1.0, "none"),
    "alpha 0.3": (0.3, "none"),
    "natural + inverse_sqrt weights": (1.0, "inverse_sqrt"),
    "alpha 0.3 + inverse_sqrt weights": (0.3, "inverse_sqrt"),
}
BOOTSTRAP_SAMPLES, CONFIDENCE = 1000, 0.95
SIZES = {
    "quick": {"examples": 96, "test_rows_per_language": 24, "validation_rows_per_language": 16,
              "encoder_layers": [0, 4, 8, 11], "conditions": ["natural", "natural + inverse_sqrt weights"]},
    "full": {"examples": 1500, "test_rows_per_language": 400, "validation_rows_per_language": 50,
             "encoder_layers": None, "conditions": list(CONDITIONS)},  # None: the whole pretrained encoder
}


def test_sample(test: pd.DataFrame, rows_per_language: int, seed: int) -> pd.DataFrame:
    """At most rows_per_language random test rows of each language (a fixed draw)."""
    parts = [rows.sample(min(len(rows), rows_per_language), random_state=seed) for _, rows in test.groupby("lang")]
    return pd.concat(parts, ignore_index=True)


def per_language_f1(model_dir: Path, frame: pd.DataFrame, labels: list[str], settings: dict[str, Any],
                    seed: int) -> dict[str, dict[str, float]]:
    """Macro-F1 of the model on each language's rows of frame, with its bootstrap interval."""
    probabilities = probabilities_from_model(model_dir, frame["text"].tolist(), settings["max_length"],
                                             settings["eval_batch_size"], settings["threads"])
    gold = gold_codes(frame, labels)
    predicted = probabilities.argmax(axis=1)
    scores = {}
    for lang in sorted(frame["lang"].unique()):
        mask = (frame["lang"] == lang).to_numpy()
        low, high = percentile_interval(bootstrap_macro_f1(gold[mask], predicted[mask], len(labels),
                                                           BOOTSTRAP_SAMPLES, seed), CONFIDENCE)
        scores[lang] = {"macro_f1": float(f1_score(gold[mask], predicted[mask], average="macro")), "low": low,
                        "high": high}
    return scores


def starting_encoder(train: pd.DataFrame, sizes: dict[str, Any], scratch: Path) -> Path:
    """The pretrained encoder, or (quick mode) its chosen layers with the vocabulary of the train split."""
    pretrained = require(REPO_ROOT / "models/pretrained/model.safetensors", "make run").parent
    if sizes["encoder_layers"] is None:
        return pretrained
    return build_student_from_teacher(pretrained, train["text"].tolist(), sizes["encoder_layers"],
                                      scratch / "encoder").path


def encoder_description(layers: list[int] | None) -> str:
    if layers is None:
        return "the whole pretrained encoder"
    return f"pretrained layers {layers} with the vocabulary of the train split (quick mode)"


def train_one(name: str, encoder: Path, train: pd.DataFrame, splits: dict[str, pd.DataFrame],
              params: dict[str, Any], sizes: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Sample and weight as the condition says, fine-tune the pretrained encoder for one epoch, score both splits."""
    alpha, weighting = CONDITIONS[name]
    balance, labels = params["balance"], params["data"]["labels"]
    sample = sample_balanced(train, sizes["examples"], alpha, balance["max_repeats"], balance["class_balance"],
                             balance["seed"])
    if weighting != "none":
        sample["weight"] = row_weights(sample, train, LossWeightSettings(languages=weighting))
    huge = 10**9  # evaluate and checkpoint once, at the last step
    settings = {**params["teacher"], "epochs": 1, "eval_every": huge, "checkpoint_every": huge,
                "eval_rows_per_language": sizes["validation_rows_per_language"]}
    output = scratch / name.replace(" ", "_")
    metrics = fine_tune(encoder, sample, splits["validation"], output, scratch / f"work-{name.replace(' ', '_')}",
                        TrainSettings.from_params(settings), labels)
    report = share_report(train, sample, alpha)
    return {"condition": name, "alpha": alpha, "weighting": weighting, "steps": metrics["steps"],
            "loss_share": {lang: entry["loss_share"] for lang, entry in report.items()},
            "seconds": metrics["seconds"],
            **{f"{split}_macro_f1": per_language_f1(output, frame, labels, settings, balance["seed"])
               for split, frame in splits.items()}}


def score_cell(entry: dict[str, float]) -> str:
    return f"{entry['macro_f1']:.3f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def run(quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    prepared = REPO_ROOT / "data/prepared"
    train = pd.read_parquet(require(prepared / "train.parquet", "make run"))
    splits = {"validation": pd.read_parquet(prepared / "validation.parquet"),
              "test": test_sample(pd.read_parquet(prepared / "test.parquet"), sizes["test_rows_per_language"],
                                  params["balance"]["seed"])}
    if quick:
        splits["validation"] = test_sample(splits["validation"], sizes["validation_rows_per_language"],
                                           params["balance"]["seed"])
    counts = train.groupby("lang").size()
    smallest, largest = counts.idxmin(), counts.idxmax()
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as scratch:
        encoder = starting_encoder(train, sizes, Path(scratch))
        runs = [train_one(name, encoder, train, splits, params, sizes, Path(scratch)) for name in sizes["conditions"]]
    languages = sorted(counts.index)
    header = [f"**{lang}** ({'smallest' if lang == smallest else 'largest'})" if lang in (smallest, largest) else lang
              for lang in languages]

    def mean(entry: dict[str, Any], split: str) -> float:
        return sum(entry[f"{split}_macro_f1"][lang]["macro_f1"] for lang in languages) / len(languages)

    tables = [{"title": f"Teacher {split} macro-F1 per language [95% bootstrap interval] after one epoch on "
                        f"{sizes['examples']} sampled examples ({runs[0]['steps']} optimizer steps in every "
                        "condition)" + (f", ≤ {sizes['test_rows_per_language']} test rows per language"
                                        if split == "test" else ", all validation rows"),
               "columns": ["condition", *header, "mean"],
               "rows": [[entry["condition"], *(score_cell(entry[f"{split}_macro_f1"][lang]) for lang in languages),
                         f"{mean(entry, split):.3f}"] for entry in runs]}
              for split in ("validation", "test")]
    tables.append({"title": "Each language's share of the loss (sampling share × mean weight)",
                   "columns": ["condition", *languages],
                   "rows": [[entry["condition"], *(f"{entry['loss_share'][lang]:.1%}" for lang in languages)]
                            for entry in runs]})
    chosen = max(runs, key=lambda entry: mean(entry, "validation"))
    change = {lang: {split: chosen[f"{split}_macro_f1"][lang]["macro_f1"] - runs[0][f"{split}_macro_f1"][lang]
                     ["macro_f1"] for split in ("validation", "test")} for lang in (smallest, largest)}
    return {
        "name": "sampling", "title": "4. Imbalance levers: sampling and loss weights (reduced teacher fine-tuning)",
        "config": {**sizes, "conditions": {name: CONDITIONS[name] for name in sizes["conditions"]},
                   "train_rows": counts.to_dict()}, "runs": runs, "tables": tables,
        "chosen_on_validation": chosen["condition"],
        "notes": [
            f"Validation (mean over languages) prefers: {chosen['condition']}. Against natural sampling it changes "
            f"the smallest language ({smallest}) by {change[smallest]['validation']:+.3f} on validation and "
            f"{change[smallest]['test']:+.3f} on test, the largest ({largest}) by "
            f"{change[largest]['validation']:+.3f} / {change[largest]['test']:+.3f}.",
            f"Encoder: {encoder_description(sizes['encoder_layers'])}. "
            "Reduced size: one epoch on a small sample, params.yaml teacher settings otherwise (frozen word "
            "embeddings as configured); evaluation once at the end. The runs are sequential with the same seeds; "
            "one run per condition, so where the intervals overlap the difference is within noise.",
        ],
    }
