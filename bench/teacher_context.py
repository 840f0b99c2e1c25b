"""Benchmark 20: the teacher's context (max_length) and its headroom over TF-IDF.

The teacher reads at most max_length pieces of a text, TF-IDF all of it. At 64 pieces, 31% of the Slovenian and 25% of
the Chinese test texts are cut (the table below counts them), the two languages where the
ensemble teacher's lead over TF-IDF is smallest after es and id. This scores the pipeline's teacher (fine-tuned at
params.yaml's max_length) with longer contexts, fine-tunes a teacher with a longer context and scores it with that
context, and reports what benchmark 19 reports for each: validation and test macro-F1 of the transformer and of the
ensemble (weight chosen on validation log-loss), the ensemble's paired test margin over TF-IDF and the retention a
student needs to reach TF-IDF. Validation says which to keep; test reports. The fine-tuning's seconds are the cost.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from bench.common import REPO_ROOT, load_project_params, require
from bench.teacher_epochs import (
    ScoredTeacher,
    compare_teachers,
    comparison_tables,
    fine_tuned_teacher,
    pipeline_teacher,
    preferred_on_validation,
)
from polydistill.model.soft_labels import SoftLabelSettings

SIZES = {"quick": {"scored_at": [128], "fine_tuned_at": [128], "max_steps": 4, "languages": ["sl"]},
         "full": {"scored_at": [128, 256], "fine_tuned_at": [128], "max_steps": None, "languages": None}}
OUTPUT = REPO_ROOT / ".cache/bench/teacher_context"


def truncated_shares(texts: pd.DataFrame, tokenizer: Any, lengths: list[int]) -> dict[str, dict[int, float]]:
    """Per language: the share of texts with more pieces (special pieces included) than each of `lengths`."""
    pieces = np.array([len(ids) for ids in tokenizer(texts["text"].tolist())["input_ids"]])
    return {lang: {length: float(np.mean(pieces[(texts["lang"] == lang).to_numpy()] > length)) for length in lengths}
            for lang in sorted(texts["lang"].unique())}


def contenders(params: dict[str, Any], sizes: dict[str, Any]) -> tuple[dict[str, ScoredTeacher], dict[str, float]]:
    """The pipeline's teacher at its own and at longer contexts, and teachers fine-tuned and scored at longer ones;
    with each one's fine-tuning seconds."""
    settings = SoftLabelSettings.from_params(params["soft_labels"])
    trained_at = params["teacher"]["max_length"]
    folder, default_seconds = pipeline_teacher()
    teachers = {f"fine-tuned at {trained_at}, scored at {length}" + (" (default)" if length == trained_at else ""):
                ScoredTeacher(folder, dataclasses.replace(settings, max_length=length))
                for length in [settings.max_length, *sizes["scored_at"]]}
    seconds = dict.fromkeys(teachers, default_seconds)
    for length in sizes["fine_tuned_at"]:
        name = f"fine-tuned and scored at {length}" + (f" (max {sizes['max_steps']} steps)" if sizes["max_steps"]
                                                       else "")
        folder, seconds[name] = fine_tuned_teacher({"max_length": length, "max_steps": sizes["max_steps"]}, params,
                                                   OUTPUT / f"teacher-{length}")
        teachers[name] = ScoredTeacher(folder, dataclasses.replace(settings, max_length=length))
    return teachers, seconds


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    teachers, seconds = contenders(params, sizes)
    results = compare_teachers(teachers, languages or sizes["languages"] or params["data"]["languages"], params)
    test = pd.read_parquet(require(REPO_ROOT / "data/prepared/test.parquet", "make run"))
    lengths = sorted({params["soft_labels"]["max_length"], *sizes["scored_at"], *sizes["fine_tuned_at"]})
    tokenizer = AutoTokenizer.from_pretrained(next(iter(teachers.values())).folder)
    shares = truncated_shares(test[test["lang"].isin(results)], tokenizer, lengths)
    return {
        "name": "teacher_context", "title": "20. The teacher's context length and the headroom over TF-IDF",
        "config": sizes, "results": results, "fine_tuning_seconds": seconds, "truncated_test_shares": shares,
        "preferred_on_validation": preferred_on_validation(results, list(teachers)),
        "tables": [*comparison_tables(results, list(teachers), seconds),
                   {"title": "Share of test texts longer than the context (teacher pieces, special pieces included)",
                    "columns": ["lang", *[f"> {length}" for length in lengths]],
                    "rows": [[lang, *[f"{share[length]:.1%}" for length in lengths]]
                             for lang, share in shares.items()]}],
        "notes": ["The teachers scored at a longer context than they were fine-tuned at are the pipeline's teacher "
                  "itself: no new fine-tuning, only its soft-label scoring reads more of each text. A teacher "
                  "fine-tuned at a longer context is one fine-tuning (seed 13), so it differs from the default by "
                  "one seed's noise besides its context; the fold twins would grow with it."],
    }

