"""Stage flow: each language's transfer set of labelled, unlabelled and augmented text (data/transfer)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.transfer import transfer_task


@flow(name="transfer")
def transfer_flow() -> dict:
    root, params = stage_context()
    prepared = root / "data/prepared"
    return transfer_task(prepared / "train.parquet", [prepared / "validation.parquet", prepared / "test.parquet"],
                         root / "data/unlabelled/texts.jsonl", root / "data/transfer", root / "metrics/transfer.json",
                         params["transfer"])


if __name__ == "__main__":
    run_stage(transfer_flow)
