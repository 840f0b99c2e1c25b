"""Benchmark 8: what each transfer source adds, per language: labelled only / + unlabelled / + augmentation.

The three sets have the default run's size per language and its rows: (a) labelled train rows repeated to fill the
language's slots (the old transfer set), (b) the default set with its augmented rows replaced by more labelled
repeats, (c) the default set (labelled + unlabelled + augmented). Every row already has the default teacher's soft
labels, so nothing is scored again. Each configuration builds its student vocabulary from its own texts, as the
pipeline does. Languages with as many labelled rows as slots (no free slots) get no extra text and are skipped.
Three seeds in full mode (students vary; teacher and soft labels fixed): the default set is chosen on KD validation
unless another beats it by at least one seed sd (bench.variants.choose_beyond_noise); test is reported only.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import REPO_ROOT, load_project_params, require
from bench.seeds import macro_f1, mean_sd, pipeline_paths
from bench.variants import choose_beyond_noise
from polydistill.data.transfer import AUGMENTED, LABELLED
from polydistill.model.distill import DistillSettings, distill_language
from polydistill.model.soft_labels import SoftLabelSettings, select_transfer_rows

SIZES = {"quick": {"languages": ["es"], "epochs": 1, "seeds": 1},
         "full": {"languages": None, "epochs": None, "seeds": 3}}
CONFIGURATIONS = ("labelled only", "+ unlabelled", "+ augmentation (default)")


def configuration_sets(transfer: pd.DataFrame, labelled_only: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """One language's three transfer sets, each the size of the default one."""
    rng = np.random.default_rng(seed)
    without_augmented = transfer[transfer["source"] != AUGMENTED]
    labelled = transfer[transfer["source"] == LABELLED]
    refill = labelled.iloc[rng.choice(len(labelled), size=len(transfer) - len(without_augmented))]
    return {CONFIGURATIONS[0]: labelled_only.reset_index(drop=True),
            CONFIGURATIONS[1]: pd.concat([without_augmented, refill], ignore_index=True),
            CONFIGURATIONS[2]: transfer.reset_index(drop=True)}


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    """languages: a subset to run (default: the mode's languages)."""
    sizes = {**SIZES["quick" if quick else "full"], **({"languages": languages} if languages else {})}
    params = load_project_params()
    labels = params["data"]["labels"]
    soft_settings = SoftLabelSettings.from_params(params["soft_labels"])
    transfer_all = pd.read_parquet(require(REPO_ROOT / "data/transfer/transfer.parquet", "make run"))
    labelled_all = pd.read_parquet(REPO_ROOT / "data/transfer/labelled.parquet")
    report = json.loads((REPO_ROOT / "metrics/transfer.json").read_text(encoding="utf-8"))["languages"]
    languages = [lang for lang in sizes["languages"] or params["data"]["languages"]
                 if report[lang]["unlabelled"] + report[lang]["augmented"] > 0]
    test_all = pd.read_parquet(REPO_ROOT / "data/prepared/test.parquet")
    scratch = REPO_ROOT / ".cache/bench/transfer_sources" / ("quick" if quick else "full")
    base_seed = params["distill"]["train"]["seed"]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for lang in languages:
        test = test_all[test_all["lang"] == lang].reset_index(drop=True)
        sets = configuration_sets(transfer_all[transfer_all["lang"] == lang],
                                  labelled_all[labelled_all["lang"] == lang], params["transfer"]["seed"])
        results[lang] = {name: [] for name in sets}
        for seed in range(base_seed, base_seed + sizes["seeds"]):
            settings = copy.deepcopy(params["distill"])
            settings["train"]["seed"] = seed
            if sizes["epochs"]:
                settings["train"]["epochs"] = sizes["epochs"]
            for index, (name, frame) in enumerate(sets.items()):
                paths = configuration_paths(lang, index, frame, scratch / lang / str(index) / str(seed))
                distilled = distill_language(lang, paths, DistillSettings.from_params(settings), soft_settings, labels)
                results[lang][name].append({
                    "rows": frame["source"].str.split(":").str[0].value_counts().to_dict(),
                    "vocab_size": distilled["student"]["vocab_size"],
                    "segmented_as_teacher": distilled["segmentation"]["test"]["identical_share"],
                    "kd_macro_f1": macro_f1(paths["output"] / "kd", test, labels, settings),
                    "ce_macro_f1": macro_f1(paths["output"] / "ce", test, labels, settings),
                    "kd_validation_macro_f1": distilled["kd"]["best_validation_macro_f1"]})
    return summarise(results, sizes["seeds"])


def configuration_paths(lang: str, index: int, frame: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The default run's paths (the default set: its finished runs are found again), else the configuration's own
    transfer set, its soft labels selected from the default ones, and for labelled only an empty unlabelled pool."""
    paths = pipeline_paths(lang, folder)
    if index == len(CONFIGURATIONS) - 1:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "transfer.parquet", index=False)
    select_transfer_rows(REPO_ROOT / "data/soft_labels", frame, folder / "soft_labels")
    paths.update(transfer=folder / "transfer.parquet", soft_labels=folder / "soft_labels")
    if index == 0:
        pool = pd.read_parquet(paths["pool"])
        pool.iloc[:0].to_parquet(folder / "pool.parquet", index=False)
        paths["pool"] = folder / "pool.parquet"
    return paths


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]], seeds: int) -> dict[str, Any]:
    """Per language and transfer set: rows by source, vocabulary and segmentation (the same for every seed), and
    mean ± sd over seeds of KD validation, KD test and CE-only test macro-F1, KD − CE paired per seed."""
    rows, chosen = [], {}
    for lang, configurations in results.items():
        chosen[lang] = choose_beyond_noise({name: [entry["kd_validation_macro_f1"] for entry in entries]
                                            for name, entries in configurations.items()}, CONFIGURATIONS[-1])
        for name, entries in configurations.items():
            counts, first = entries[0]["rows"], entries[0]
            scores = {key: [entry[key] for entry in entries]
                      for key in ("kd_validation_macro_f1", "kd_macro_f1", "ce_macro_f1")}
            gains = [entry["kd_macro_f1"] - entry["ce_macro_f1"] for entry in entries]
            rows.append([lang, name, counts.get("labelled", 0), counts.get("unlabelled", 0),
                         counts.get("augmented", 0), first["vocab_size"], f"{first['segmented_as_teacher']:.0%}",
                         mean_sd(scores["kd_validation_macro_f1"]), mean_sd(scores["kd_macro_f1"]),
                         mean_sd(scores["ce_macro_f1"]), f"{statistics.mean(gains):+.3f}",
                         "chosen" if name == chosen[lang] else ""])
    return {"name": "transfer_sources", "title": "8. Transfer sources: labelled only / + unlabelled / + augmentation",
            "results": results, "chosen": chosen,
            "tables": [{"title": f"Mean ± sd over {seeds} seed(s) per configuration, default teacher and soft labels. "
                                 "Rows by source in the KD set (labelled counts repeats); the CE-only student always "
                                 "trains on labelled rows, its vocabulary follows the configuration's texts. The "
                                 "choice reads KD validation only.",
                        "columns": ["lang", "transfer set", "labelled", "unlabelled", "augmented", "vocab",
                                    "test segmented as teacher", "KD validation F1", "KD test F1", "CE-only test F1",
                                    "KD − CE", ""],
                        "rows": rows}],
            "notes": [f"params.yaml's transfer set is {CONFIGURATIONS[-1]}; validation chooses {chosen} (a gain "
                      "under one seed sd keeps the default)."]}
