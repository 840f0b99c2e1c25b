"""Stage flow: teacher logits for the transfer, validation and test sets (data/soft_labels)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import soft_labels_task


@flow(name="soft_labels")
def soft_labels_flow() -> dict:
    root, params = stage_context()
    settings = params["soft_labels"]
    splits = {"transfer": root / "data/transfer/transfer.parquet",
              "validation": root / "data/prepared/validation.parquet",
              "test": root / "data/prepared/test.parquet"}
    tfidf = root / "models/tfidf" if settings["ensemble"] else None
    return soft_labels_task(root / "models/teacher", tfidf, splits, root / "data/prepared/train.parquet",
                            root / "data/soft_labels", root / "metrics/soft_labels.json", settings,
                            params["data"]["labels"])


if __name__ == "__main__":
    run_stage(soft_labels_flow)
