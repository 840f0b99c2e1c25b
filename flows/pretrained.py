"""Stage flow: the pretrained teacher encoder as a local Hugging Face folder (models/pretrained)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import pretrained_task


@flow(name="pretrained")
def pretrained_flow() -> dict:
    root, params = stage_context()
    return pretrained_task(params["teacher"]["model"], root / "models/pretrained",
                           root / params["fetch"]["cache_dir"], params["data"]["labels"])


if __name__ == "__main__":
    run_stage(pretrained_flow)
