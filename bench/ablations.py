"""Benchmark 6: ablations on one small language with the stored soft labels (model.distill.distill_language):
student from teacher layers + trimmed vocabulary vs a scratch student, with vs without the hidden-state term, and
k = 2, 3, 4 teacher layers. Each a short distillation (KD and CE-only students); test macro-F1, params, throughput."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import f1_score

from bench.common import (
    REPO_ROOT,
    format_summary,
    interleave,
    load_project_params,
    paired_ratios,
    require,
    summarize,
)
from bench.seeds import pipeline_paths
from polydistill.model.distill import distill_language
from polydistill.model.metrics import measure_speed, probabilities_from_model
from polydistill.model.soft_labels import SoftLabelSettings, select_transfer_rows

LANGUAGE = "sl"
HIDDEN_LOSS_WEIGHT = 1.0
SIZES = {
    "quick": {"transfer_rows": 160, "epochs": 1, "eval_every": 100, "speed_repeats": 2, "speed_texts": 64,
              "latency_repeats": 5},
    "full": {"transfer_rows": None, "epochs": 1, "eval_every": 30, "speed_repeats": 3, "speed_texts": 256,
             "latency_repeats": 20},
}


def spread_layers(count: int, teacher_layers: int) -> list[int]:
    """`count` teacher layers (0-based) evenly spread from the first to the last."""
    if count == 1:
        return [teacher_layers - 1]
    return sorted({round(index * (teacher_layers - 1) / (count - 1)) for index in range(count)})


def configurations(distill: dict[str, Any], teacher_layers: int) -> dict[str, dict[str, Any]]:
    """Name → distill settings for each ablation (the params.yaml default student is the k=4 / reference one)."""
    default_layers = list(distill["student"]["layers"])

    def variant(kind: str = "from_teacher", layers: list[int] | None = None, hidden: float = 0.0) -> dict:
        settings = copy.deepcopy(distill)
        settings.update(mode="shared", hidden_loss_weight=hidden)
        settings["student"].update(kind=kind, layers=layers or default_layers)
        return settings

    chosen = {f"from_teacher k={len(default_layers)} {default_layers} (default)": variant()}
    chosen["scratch (params.yaml distill.student.scratch)"] = variant(kind="scratch")
    chosen[f"from_teacher + hidden-state term (weight {HIDDEN_LOSS_WEIGHT})"] = variant(hidden=HIDDEN_LOSS_WEIGHT)
    for count in (2, 3):
        layers = spread_layers(count, teacher_layers)
        chosen[f"from_teacher k={count} {layers}"] = variant(layers=layers)
    return chosen


def language_inputs(scratch: Path, rows: int, params: dict[str, Any]) -> dict[str, Path]:
    """The language's first `rows` transfer rows (all when None) with their stored soft labels, and the default
    run's other inputs."""
    transfer = pd.read_parquet(require(REPO_ROOT / "data/transfer/transfer.parquet", "make run"))
    keep = transfer[transfer["lang"] == LANGUAGE].iloc[:rows].reset_index(drop=True)
    copies = scratch / "inputs"
    copies.mkdir(parents=True)
    keep.to_parquet(copies / "transfer.parquet", index=False)
    select_transfer_rows(REPO_ROOT / "data/soft_labels", keep, copies / "soft_labels")
    return {**pipeline_paths(LANGUAGE, scratch), "soft_labels": copies / "soft_labels",
            "transfer": copies / "transfer.parquet"}


def test_macro_f1(model_dir: Path, test: pd.DataFrame, labels: list[str], settings: dict[str, Any]) -> float:
    probabilities = probabilities_from_model(model_dir, test["text"].tolist(), settings["train"]["max_length"],
                                             settings["train"]["eval_batch_size"], settings["threads"])
    gold = test["label"].map({label: index for index, label in enumerate(labels)}).to_numpy()
    return float(f1_score(gold, probabilities.argmax(axis=1), average="macro"))


def run(quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    labels = params["data"]["labels"]
    teacher_layers = int(pd.read_json(require(REPO_ROOT / "models/teacher/config.json", "make run"),
                                      typ="series")["num_hidden_layers"])
    test_all = pd.read_parquet(REPO_ROOT / "data/prepared/test.parquet")
    test = test_all[test_all["lang"] == LANGUAGE].reset_index(drop=True)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ablations-") as scratch:
        scratch = Path(scratch)
        inputs = language_inputs(scratch, sizes["transfer_rows"], params)
        for index, (name, settings) in enumerate(configurations(params["distill"], teacher_layers).items()):
            settings["train"].update(epochs=sizes["epochs"], eval_every=sizes["eval_every"])
            paths = {**inputs, "output": scratch / f"out-{index}", "metrics": scratch / f"metrics-{index}.json",
                     "work": scratch / f"work-{index}"}
            report = distill_language(LANGUAGE, paths, settings,
                                      SoftLabelSettings.from_params(params["soft_labels"]), labels)
            runs[name] = {"student": report["student"], "steps": report["kd"]["steps"],
                          "kd_macro_f1": test_macro_f1(paths["output"] / "kd", test, labels, settings),
                          "ce_macro_f1": test_macro_f1(paths["output"] / "ce", test, labels, settings),
                          "directory": paths["output"] / "kd"}
        speeds = interleave({name: speed_probe(entry["directory"], test["text"].tolist(), params, sizes)
                             for name, entry in runs.items()}, sizes["speed_repeats"])
    return summarise(runs, speeds, sizes, len(test))


def speed_probe(model_dir: Path, texts: list[str], params: dict[str, Any], sizes: dict[str, Any]) -> Any:
    evaluate = params["evaluate"]

    def call() -> dict[str, float]:
        return measure_speed(model_dir, texts[:sizes["speed_texts"]], evaluate["threads"], evaluate["max_length"],
                             sizes["latency_repeats"], evaluate["throughput_batch"], 1)
    return call


def summarise(runs: dict[str, dict], speeds: dict[str, list[dict]], sizes: dict[str, Any],
              test_rows: int) -> dict[str, Any]:
    reference = next(iter(runs))
    throughput = {name: [entry["throughput_texts_per_s"] for entry in values] for name, values in speeds.items()}
    rows = []
    for name, entry in runs.items():
        student = entry["student"]
        speed = paired_ratios(throughput[name], throughput[reference])
        rows.append([name, f"{entry['kd_macro_f1']:.3f}", f"{entry['ce_macro_f1']:.3f}",
                     f"{entry['kd_macro_f1'] - entry['ce_macro_f1']:+.3f}", f"{student['total_params']:,}",
                     f"{student['non_embedding_params']:,}", f"{summarize(throughput[name])['median']:.0f}",
                     format_summary(speed, ".2f", "x")])
        entry.pop("directory")
    return {
        "name": "ablations", "title": f"6. Ablations ({LANGUAGE}, short distillation)",
        "config": {**sizes, "language": LANGUAGE, "hidden_loss_weight": HIDDEN_LOSS_WEIGHT}, "runs": runs,
        "speeds": speeds,
        "tables": [{"title": f"{LANGUAGE}: {sizes['transfer_rows'] or 'all'} transfer rows with stored soft labels, "
                             f"{sizes['epochs']} epoch(s); test macro-F1 on all {test_rows} {LANGUAGE} test rows; "
                             f"throughput at batch 32 (median of {sizes['speed_repeats']} interleaved repeats)",
                    "columns": ["student", "KD F1", "CE-only F1", "KD gain", "params", "non-embedding params",
                                "texts/s", "throughput vs default"],
                    "rows": rows}],
        "notes": ["Throughput ratios of identical architectures (default vs hidden-state term) show the measurement "
                  "noise of the machine. Short runs: differences of a few points are within noise at this size. "
                  "The scratch student has no teacher weights and needs far more steps than this; the hidden-state "
                  "term runs the teacher on every batch, so its training step costs several times more."],
    }
