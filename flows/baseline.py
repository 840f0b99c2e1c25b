"""Stage flow: TF-IDF + logistic regression per language (models/tfidf)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import baseline_task


@flow(name="baseline")
def baseline_flow() -> dict:
    root, params = stage_context()
    return baseline_task(root / "data/prepared/train.parquet", root / "data/prepared/validation.parquet",
                         root / "models/tfidf", root / "metrics/baseline.json", params["data"]["labels"],
                         params["baseline"])


if __name__ == "__main__":
    run_stage(baseline_flow)
