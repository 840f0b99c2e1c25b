"""Stage flow: the KD and CE-only students of one language (`python -m flows.distill <lang>`)."""

import sys

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import distill_task


@flow(name="distill")
def distill_flow(lang: str) -> dict:
    root, params = stage_context()
    ensemble = params["soft_labels"]["ensemble"]
    paths = {
        "teacher": root / "models/teacher",
        "fold_teachers": root / "models/fold_teachers",
        "tfidf": root / "models/tfidf" if ensemble else None,
        "soft_labels": root / "data/soft_labels",
        "transfer": root / "data/transfer/transfer.parquet",
        "labelled_transfer": root / "data/transfer/labelled.parquet",
        "pool": root / "data/transfer/pool.parquet",
        "word_frequencies": root / "data/word_frequencies",
        "teacher_set": root / "data/balanced/teacher.parquet",
        "train": root / "data/prepared/train.parquet",
        "validation": root / "data/prepared/validation.parquet",
        "test": root / "data/prepared/test.parquet",
        "output": root / f"models/students/{lang}",
        "metrics": root / f"metrics/distill/{lang}.json",
        "work": root / ".cache/runs",
    }
    return distill_task(lang, paths, params["distill"], params["soft_labels"], params["data"]["labels"])


if __name__ == "__main__":
    run_stage(distill_flow, sys.argv[1])
