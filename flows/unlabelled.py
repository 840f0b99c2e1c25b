"""Stage flow: unlabelled in-language text for the transfer sets (data/unlabelled)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.transfer import unlabelled_task


@flow(name="unlabelled")
def unlabelled_flow() -> dict:
    root, params = stage_context()
    return unlabelled_task(params["unlabelled"], params["fetch"], params["data"]["languages"],
                           root / "data/unlabelled", root)


if __name__ == "__main__":
    run_stage(unlabelled_flow)
