"""Stage flow: fetch the embedded corpus (or read the user's) into data/raw."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.data import fetch_task


@flow(name="fetch")
def fetch_flow() -> dict:
    root, params = stage_context()
    return fetch_task(params["data"], params["fetch"], root / "data/raw", root)


if __name__ == "__main__":
    run_stage(fetch_flow)
