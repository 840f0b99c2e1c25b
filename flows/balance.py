"""Stage flow: the language-balanced teacher set from the train split."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.data import balance_task


@flow(name="balance")
def balance_flow() -> dict:
    root, params = stage_context()
    return balance_task(root / "data/prepared/train.parquet", root / "data/balanced", root / "metrics/balance.json",
                        root / "plots/balance", params["balance"])


if __name__ == "__main__":
    run_stage(balance_flow)
