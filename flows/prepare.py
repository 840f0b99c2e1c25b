"""Stage flow: normalise, deduplicate and split data/raw into data/prepared."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.data import prepare_task


@flow(name="prepare")
def prepare_flow() -> dict:
    root, params = stage_context()
    return prepare_task(root / "data/raw/corpus.jsonl", root / "data/prepared", root / "metrics/prepare.json",
                        params["prepare"])


if __name__ == "__main__":
    run_stage(prepare_flow)
