"""Stage flow: teacher logits for the transfer, validation and test sets (data/soft_labels).

One task per language scores that language's rows (on Dask workers with the dask executor, see flows/fanout.py);
the folder is then written from all of them: ensemble weights, logits, fingerprint.
"""

from prefect import flow

from flows.common import run_stage, stage_context
from flows.fanout import per_language, stage_task_runner
from tasks.model import score_language_task, soft_labels_task


@flow(name="soft_labels")
def soft_labels_flow() -> dict:
    root, params = stage_context()
    settings, labels = params["soft_labels"], params["data"]["labels"]
    splits = {"transfer": root / "data/transfer/transfer.parquet",
              "validation": root / "data/prepared/validation.parquet",
              "test": root / "data/prepared/test.parquet"}
    teacher, fold_teachers = root / "models/teacher", root / "models/fold_teachers"
    train = root / "data/prepared/train.parquet"
    tfidf = root / "models/tfidf" if settings["ensemble"] else None
    scores = per_language(score_language_task, params["data"]["languages"], teacher, fold_teachers, tfidf, splits,
                          train, settings, labels)
    return soft_labels_task(teacher, fold_teachers, tfidf, splits, scores, root / "data/soft_labels",
                            root / "metrics/soft_labels.json", settings, labels)


if __name__ == "__main__":
    run_stage(soft_labels_flow.with_options(task_runner=stage_task_runner()))
