"""Stage flow: validate data/prepared with Great Expectations; nothing downstream runs on failure."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.data import validate_task


@flow(name="validate")
def validate_flow() -> dict:
    root, params = stage_context()
    return validate_task(root / "data/prepared", params["validate"], params["data"]["languages"],
                         params["data"]["labels"], root / "gx", root / "data/validation/report.json")


if __name__ == "__main__":
    run_stage(validate_flow)
