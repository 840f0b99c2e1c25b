"""Stage flow: fine-tune the teacher on the balanced teacher set (models/teacher)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import train_teacher_task


@flow(name="train_teacher")
def train_teacher_flow() -> dict:
    root, params = stage_context()
    return train_teacher_task(root / "models/pretrained", root / "data/balanced/teacher.parquet",
                              root / "data/prepared/validation.parquet", root / "models/teacher",
                              root / "metrics/teacher.json", root / ".cache/runs", params["teacher"],
                              params["data"]["labels"])


if __name__ == "__main__":
    run_stage(train_teacher_flow)
